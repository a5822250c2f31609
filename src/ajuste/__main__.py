from ajuste.cli.main import run

run()
