-- Recovery from a fast-forward attack (issue 15; TUF specification 5.3.11): when a trust root rotation replaces the
-- keys bound to a source site, the anti-rollback floor of that site is reset, because the replaced keys may have
-- signed a bundle with a sequence far ahead of the site's real one. Its rows move from bundle_imports here (the
-- evidence stays; `bundle list` shows them) and its floor starts again from 0 under the new keys.
CREATE TABLE bundle_imports_superseded (
    source_site         VARCHAR NOT NULL,
    sequence            BIGINT NOT NULL,
    kind                VARCHAR NOT NULL,
    bundle_id           VARCHAR NOT NULL,
    payload_digest      VARCHAR NOT NULL,
    created_at          TIMESTAMP NOT NULL, -- the import's verified time anchor (still counts as the latest anchor)
    imported_at         TIMESTAMP NOT NULL,
    imported_by         VARCHAR NOT NULL,
    outcome             VARCHAR NOT NULL,
    superseded_by_root  BIGINT NOT NULL,    -- the trust root version that replaced the site's keys
    superseded_at       TIMESTAMP NOT NULL
);
