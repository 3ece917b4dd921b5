-- Policy authority (issue 15): quotas, rate limits and concurrency limits carry the site that issued them and a
-- per-issuer version, and this site may designate ONE other site whose bundles' policies it applies.
-- issuer_site: the site whose operator set the row (this site for `quota set` & co.; the source's issuer for a row
--   applied from a policy authority's bundle). issuer_version: that issuer's version of the row, bumped on each
--   change by that issuer (for local changes: the row's revision). Existing rows were all set here.
-- Breakers (runtime state that is this site's own) and pauses (no revision) stay mirrored only: no issuer.
ALTER TABLE quotas ADD COLUMN issuer_site VARCHAR;
ALTER TABLE quotas ADD COLUMN issuer_version INTEGER;
ALTER TABLE rate_limits ADD COLUMN issuer_site VARCHAR;
ALTER TABLE rate_limits ADD COLUMN issuer_version INTEGER;
ALTER TABLE concurrency_limits ADD COLUMN issuer_site VARCHAR;
ALTER TABLE concurrency_limits ADD COLUMN issuer_version INTEGER;
UPDATE quotas SET issuer_site = (SELECT value FROM ledger_meta WHERE key = 'site_id'), issuer_version = revision;
UPDATE rate_limits SET issuer_site = (SELECT value FROM ledger_meta WHERE key = 'site_id'), issuer_version = revision;
UPDATE concurrency_limits SET issuer_site = (SELECT value FROM ledger_meta WHERE key = 'site_id'),
                              issuer_version = revision;

-- The site whose bundles' policies this site applies (`airgap authority set SITE --reason R`, audited); at most
-- one row. Without a row every bundle's policies stay in mirror_policies, shown but not applied.
CREATE TABLE policy_authority (
    slot            INTEGER PRIMARY KEY CHECK (slot = 1),
    authority_site  VARCHAR NOT NULL,
    reason          VARCHAR NOT NULL,
    set_at          TIMESTAMP NOT NULL,
    set_by          VARCHAR NOT NULL
);
