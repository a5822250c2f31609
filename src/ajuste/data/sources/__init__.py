"""Load a labelled data set from wherever it lives into one uniform `LabelledData`.

Supported sources (see `load_data`), one module each:

- ``digits``: ``"digits"``, scikit-learn's bundled 8x8 digits, the built-in default that needs no files;
- ``images``: an image folder ``root/<class>/*.jpg`` or ``root/{train,val|validation,test}/<class>/*.jpg``;
- ``npz``: a ``.npz`` file (``x``/``y``, ``images``/``labels``, ``x_train``/``y_train``... or MedMNIST-style
  ``{train,val,test}_images`` + ``{train,val,test}_labels``);
- ``tables``: a text table ``.csv`` / ``.tsv`` / ``.jsonl`` (or an extension-less tab-separated file), or a folder
  holding ``train.csv`` + ``test.csv`` (+ ``val|validation|dev.csv``), also in ``.tsv`` / ``.jsonl``; it reads
  them through ``table_read`` (rows) and ``table_columns`` (which column is the text, which the label).

``load`` holds `load_data` and its loader table (source kind -> loader); ``records`` the `LabelledData` it returns
and the `_Raw` every loader hands over; ``labels`` turns class names into indices, the same for every kind;
``common`` holds the extensions, split names and message helpers all of them use.

Every user-facing failure is a `DataError` whose message is one line: what is wrong, where, how to fix it.
"""

from __future__ import annotations

from ajuste.data.sources.common import BUILTIN_SOURCES, IMAGE_EXTENSIONS, TEXT_EXTENSIONS
from ajuste.data.sources.images import check_images
from ajuste.data.sources.load import load_data
from ajuste.data.sources.records import LabelledData
from ajuste.data.sources.tables import load_texts

__all__ = ["LabelledData", "load_data", "load_texts", "check_images", "BUILTIN_SOURCES", "IMAGE_EXTENSIONS",
           "TEXT_EXTENSIONS"]
