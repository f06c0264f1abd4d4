"""The data contracts between jobs: the class order, the petastorm Unischema of image items,
and the Arrow schemas of the manifest.

The class order is the sorted list below and never changes: every probability vector in an
out-of-fold file or a bundle is in this order.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from petastorm.codecs import CompressedImageCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from pyspark.sql.types import IntegerType, StringType

CLASSES: tuple[str, ...] = (
    "графика",
    "документы",
    "живопись",
    "оружие",
    "предметы археологии",
    "предметы естественнонаучной коллекции",
    "предметы минералогической коллекции",
    "предметы нумизматики",
    "предметы печатной продукции",
    "предметы прикладного искусства, быта и этнографии",
    "предметы техники",
    "прочие",
    "редкие книги",
    "скульптура",
    "фотографии и негативы",
)
assert list(CLASSES) == sorted(CLASSES), "the class order is the sorted order"
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

# Which input file a row came from.
SPLIT_TRAIN = "train"  # train.csv: labelled, text
SPLIT_TEST = "test"  # test.csv: unlabelled, text and/or image
SPLIT_TRAIN_IMAGES = "train_images"  # train_images.csv: labelled, with an image
SPLIT_CRAWL = "crawl"  # rows fetched by the crawl job

# Manifest statuses written by ingest.
STATUS_OK = "ok"  # an image was decoded and stored in the dataset
STATUS_NO_IMAGE = "no_image"  # the row has no image; kept for the text model
STATUS_QUARANTINED = "quarantined"  # an image exists but could not be used (reason says why)
STATUS_REJECTED = "rejected"  # the CSV row itself is unusable (duplicate guid, unknown label, ...)
STATUSES = (STATUS_OK, STATUS_NO_IMAGE, STATUS_QUARANTINED, STATUS_REJECTED)


def make_image_schema(codec: str = "jpeg", jpeg_quality: int = 92) -> Unischema:
    """The petastorm schema of the image dataset. Images are compressed per row by petastorm's
    codec (JPEG by default) so that ~180K images take a few GB."""
    image_codec = CompressedImageCodec(codec, quality=jpeg_quality) if codec == "jpeg" else CompressedImageCodec(codec)
    return Unischema(
        "ImageItem",
        [
            UnischemaField("guid", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("split", np.str_, (), ScalarCodec(StringType()), False),
            UnischemaField("typology", np.str_, (), ScalarCodec(StringType()), True),
            UnischemaField("description", np.str_, (), ScalarCodec(StringType()), True),
            UnischemaField("image", np.uint8, (None, None, 3), image_codec, False),
            UnischemaField("orig_width", np.int32, (), ScalarCodec(IntegerType()), False),
            UnischemaField("orig_height", np.int32, (), ScalarCodec(IntegerType()), False),
            UnischemaField("sha256", np.str_, (), ScalarCodec(StringType()), False),
        ],
    )


ImageItemSchema = make_image_schema()

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("guid", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),  # 1-based data row in the CSV
        pa.field("typology", pa.string()),
        pa.field("has_description", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("image_member", pa.string()),
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("image_bytes", pa.int64()),
    ]
)

# Manifest statuses added by the crawl job (beside ok / quarantined / rejected above).
STATUS_BAD_URL = "bad_url"  # not http(s), unparsable, no host: never requested
STATUS_HTTP_ERROR = "http_error"  # a non-200 final answer (after retries for 5xx / 429)
STATUS_TIMEOUT = "timeout"  # connect, read or total deadline exceeded (after retries)
STATUS_CONNECTION_ERROR = "connection_error"  # refused, reset, DNS, body shorter than declared
STATUS_TOO_MANY_REDIRECTS = "too_many_redirects"  # over crawl.max_redirects, or a loop
STATUS_TOO_LARGE = "too_large"  # body over crawl.max_bytes, or file over images.max_bytes
STATUS_NOT_IMAGE = "not_image"  # fetched, but empty or not an image format we accept
STATUS_ROBOTS_DISALLOWED = "robots_disallowed"  # robots.txt forbids the URL (never requested) or a redirect target of it (the target never requested), or was unreachable
CRAWL_STATUSES = (
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_BAD_URL,
    STATUS_HTTP_ERROR,
    STATUS_TIMEOUT,
    STATUS_CONNECTION_ERROR,
    STATUS_TOO_MANY_REDIRECTS,
    STATUS_TOO_LARGE,
    STATUS_NOT_IMAGE,
    STATUS_ROBOTS_DISALLOWED,
    STATUS_QUARANTINED,
)

# The crawl manifest: the ingest columns (image_member holds the final URL after redirects),
# then what the fetch did.
CRAWL_MANIFEST_SCHEMA = pa.schema(
    list(MANIFEST_SCHEMA)
    + [
        pa.field("url", pa.string()),
        pa.field("http_status", pa.int32()),  # the last HTTP status seen (None: no answer)
        pa.field("attempts", pa.int32(), nullable=False),  # attempts made (0: never requested)
        pa.field("bytes", pa.int64()),  # body bytes received on the last attempt
    ]
)
