"""The client's sans-IO core: what to send, and what an answer means.

The sync (``_sync``) and async (``_async``) clients are thin drivers around
this module: they resolve headers, do the I/O and sleep; everything that
decides (request shapes, status mapping, read-mode state machines, retry
delays, producer batching) lives here once, so the twins cannot drift apart.

It is one namespace over four modules: ``_wire`` (results, requests, the
status -> exception map), ``_retry`` (what may be retried, backoff budgets),
``_reads`` (the read state machine) and ``_producer_core`` (the idempotent
producer's batching and sequencing).
"""

# The core is split by concern; the twins and the helpers use it as one namespace.
from ._producer_core import Batch, Outcome, ProducerCore, ProducerOptions
from ._reads import LIVE_MODES, LiveMode, ReadState, validate_read
from ._retry import (
    NO_RETRY,
    PRODUCER_RETRY,
    Backoff,
    RetryHook,
    RetryKind,
    RetryPolicy,
    parse_retry_after,
    retry_after_of,
    should_retry,
)
from ._wire import (
    JSON_TYPE,
    MISSING_JSON,
    OCTET_STREAM,
    AppendResult,
    Chunk,
    JsonBatch,
    Request,
    StreamInfo,
    append_request,
    append_result,
    create_request,
    dumps_json,
    encode_body,
    error_for,
    fork_source,
    info_from,
    initial_body,
    json_array,
    loads_json,
    merge_values,
    sorted_params,
    source_path,
    validate_timeout,
    validate_url,
    validate_value_source,
)

__all__ = [
    "JSON_TYPE", "LIVE_MODES", "MISSING_JSON", "NO_RETRY", "OCTET_STREAM", "PRODUCER_RETRY",
    "AppendResult", "Backoff", "Batch", "Chunk", "JsonBatch", "LiveMode", "Outcome",
    "ProducerCore", "ProducerOptions", "ReadState", "Request", "RetryHook", "RetryKind",
    "RetryPolicy", "StreamInfo", "append_request", "append_result", "create_request",
    "dumps_json", "encode_body", "error_for", "fork_source", "info_from", "initial_body",
    "json_array", "loads_json", "merge_values", "parse_retry_after", "retry_after_of",
    "should_retry", "sorted_params", "source_path", "validate_read", "validate_timeout",
    "validate_url", "validate_value_source",
]
