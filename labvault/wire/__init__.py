"""What travels between the HTTP client and the server: JSON and binary codecs of records and metric
series, filter and ordering round trips (``codecs``), and the table of error classes by HTTP status
(``errors``), re-exported here for both sides.

``labvault.wire.transport`` is the client's side only (one request method over httpx, with retries and
the error responses turned back into exceptions); it is not imported here, so the server never loads it.
"""

from labvault.wire.codecs import (
    API_PREFIX,
    API_VERSION,
    BIGINT_JSON_MEDIA_TYPE,
    METRICS_MEDIA_TYPE,
    SHA256_HEADER,
    artifact_in,
    artifact_out,
    decode_series,
    encode_series,
    event_in,
    experiment_in,
    experiment_out,
    field_text,
    float_in,
    float_out,
    run_in,
    run_out,
    series_in_json,
    series_out_json,
    unparse_filter,
    unparse_order,
)
from labvault.wire.errors import ERROR_BY_STATUS, STATUS_BY_ERROR, error_from, status_for

__all__ = [
    "API_PREFIX",
    "API_VERSION",
    "BIGINT_JSON_MEDIA_TYPE",
    "ERROR_BY_STATUS",
    "METRICS_MEDIA_TYPE",
    "SHA256_HEADER",
    "STATUS_BY_ERROR",
    "artifact_in",
    "artifact_out",
    "decode_series",
    "encode_series",
    "error_from",
    "event_in",
    "experiment_in",
    "experiment_out",
    "field_text",
    "float_in",
    "float_out",
    "run_in",
    "run_out",
    "series_in_json",
    "series_out_json",
    "status_for",
    "unparse_filter",
    "unparse_order",
]
