"""Preference data: formats, sources, validation, tokenisation, grain batches.

See :mod:`jalign.data.pipeline` for the end-to-end entry points.
"""

from jalign.data.collate import Collator, bucket_lengths
from jalign.data.formats import KINDS, Example, RecordFormat, detect_kind
from jalign.data.pipeline import (
    PreferenceData,
    preference_batches,
    read_preferences,
)
from jalign.data.shards import Shards
from jalign.data.json_sources import JsonArraySource, JsonlSource
from jalign.data.sources import HFSource, ParquetSource, TfdsSource, open_source
from jalign.data.tokenization import (
    TRUNCATIONS,
    TokenizedExample,
    Truncation,
    Tokenization,
    render,
    tokenize,
)
from jalign.data.validation import (
    REASONS,
    DataError,
    DataFileError,
    Malformed,
    MalformedRecordError,
    SkipReport,
)

__all__ = [
    "Collator", "bucket_lengths", "KINDS", "Example", "RecordFormat",
    "detect_kind", "PreferenceData", "preference_batches", "read_preferences",
    "Shards", "HFSource", "JsonArraySource", "JsonlSource", "ParquetSource", "TfdsSource", "open_source",
    "TRUNCATIONS", "TokenizedExample", "Truncation", "Tokenization", "render", "tokenize",
    "REASONS", "DataError", "DataFileError", "Malformed",
    "MalformedRecordError", "SkipReport",
]
