"""Reference pages generated from the code (a test checks the committed copies are current)."""
