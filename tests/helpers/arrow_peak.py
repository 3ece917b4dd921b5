"""Decode a Parquet file under a fresh Arrow memory pool and print the pool's peak (a subprocess, so the pool's
high-water mark starts at zero and no other test's allocations count).

    arrow_peak.py FILE checked ROWS UNCOMPRESSED MAX_BATCH_BYTES   decode through parquet_check (quotas schema)
    arrow_peak.py FILE plain                                      decode the first batch with plain pyarrow
Prints {"peak": bytes, "reason": reason code or null}.
"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from airgap_orch.bundle.errors import BundleError
from airgap_orch.bundle.limits import ParquetLimits
from airgap_orch.bundle.parquet_check import open_parquet

QUOTAS = pa.schema([("tenant", pa.string()), ("limit_value", pa.int64())])

pool = pa.proxy_memory_pool(pa.default_memory_pool())
pa.set_memory_pool(pool)
reason = None
with open(sys.argv[1], "rb") as source:
    if sys.argv[2] == "plain":
        next(pq.ParquetFile(source).iter_batches(batch_size=8192))
    else:
        limits = ParquetLimits(max_decoded_batch_bytes=int(sys.argv[5]))
        checked = open_parquet(source, expected_schema=QUOTAS, rows=int(sys.argv[3]),
                               uncompressed_bytes=int(sys.argv[4]), limits=limits)
        try:
            for _batch in checked.iter_batches():
                pass
        except BundleError as exc:
            reason = exc.reason_code
print(json.dumps({"peak": pool.max_memory(), "reason": reason}), flush=True)
os._exit(0)  # the proxy pool must outlive every array; skip interpreter teardown
