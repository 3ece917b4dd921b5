"""Air-gap bundles: the format, its writer and its I/O-free verifier (docs/bundle-format.md).

    errors   the error tree (exit 4 verification failed, exit 5 refused by policy) with reason codes
    limits   every size and count cap, in one place
    merkle   RFC 6962 Merkle tree hash over member bytes or leaf hashes
    tarfmt   canonical ustar writer and the strict reader that refuses anything it would not write
    keys     Ed25519 keys as TUF names them (keyids recomputed from key material), threshold counting
    dsse     DSSE envelopes: PAE, canonical serialization, signing, threshold verification
    trust    the TUF trust root: build, sign, rotate, verify a chain from a pinned root, site bindings
    manifest the signed manifest: schema, canonical form, content-derived bundle id
    anchor   the time anchor and the staleness verdict
    decompress     streaming zstd with a window and an output cap
    parquet_check  a Parquet member's footer and page headers before decoding; bounded record batches
    verify   THE ordered verification sequence: bundle bytes + pinned root -> VerifiedBundle
    writer   writes a bundle deterministically; adds a signature to one (`bundle sign`)

Each function takes bytes (or a file object it reads within caps) and returns verified, frozen objects or
raises one error from `errors`; nothing here opens files, prints or reads the clock (callers pass `now`).
"""
