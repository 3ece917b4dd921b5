-- Air-gap bundles (issue 15): the trust roots this site pinned, and the bundles it exported.

-- One row per pinned version (`trust pin`; operations/trust.py). A version is pinned only after it verified:
-- version 1 (or the first pinned) against its own root threshold, each later one as a rotation from the
-- version before it. The newest row is the trusted root; older rows stay as the chain's evidence.
CREATE TABLE trust_roots (
    version      BIGINT PRIMARY KEY,
    root_json    VARCHAR NOT NULL,      -- the document exactly as verified (UTF-8 JSON, signatures included)
    fingerprint  VARCHAR NOT NULL,      -- sha256 hex of the root's canonical signed part (what its keys signed)
    expires_at   TIMESTAMP NOT NULL,
    pinned_at    TIMESTAMP NOT NULL,
    pinned_by    VARCHAR NOT NULL
);

-- One row per bundle written (`bundle export`; operations/bundles.py): each export to a target site gets the
-- next sequence of that target's series. Recorded in the transaction that ends the export, after the file
-- was written in full.
CREATE TABLE bundle_exports (
    target_site     VARCHAR NOT NULL,
    sequence        BIGINT NOT NULL,
    kind            VARCHAR NOT NULL,   -- 'full' (incremental bundles are not built yet)
    base_sequence   BIGINT,             -- NULL for a full bundle
    tenant          VARCHAR,            -- the one tenant a --tenant export covers; NULL: every tenant
    bundle_id       VARCHAR NOT NULL,   -- the manifest's content id
    payload_sha256  VARCHAR NOT NULL,   -- sha256 of the signed manifest payload
    merkle_root     VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL, -- the manifest's created_at (the time anchor's time)
    size_bytes      BIGINT NOT NULL,
    exported_at     TIMESTAMP NOT NULL,
    exported_by     VARCHAR NOT NULL,
    PRIMARY KEY (target_site, sequence)
);
