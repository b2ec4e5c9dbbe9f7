-- A legacy PostgreSQL HR schema (mappings/legacy_pg.yaml maps it), as an in-house HR app left it:
-- keys drawn by the app from a sequence (no column default), e-mail addresses in a child table,
-- people never deleted but marked (deleted_at), accounts locked and unlocked by stored procedures
-- that also write an audit row. It knows nothing of SCIM.
--
--   psql "$LEGACY_PG_DSN" -f mappings/sql/legacy_pg.sql

CREATE SEQUENCE hr_person_seq START 10000;

CREATE TABLE hr_person (
    person_id INTEGER PRIMARY KEY,              -- nextval('hr_person_seq'), drawn by the writer
    account_name VARCHAR(64) NOT NULL,
    given_name VARCHAR(80),
    surname VARCHAR(80),
    full_name VARCHAR(160),
    job_title VARCHAR(120),
    department VARCHAR(120),
    employee_no VARCHAR(20),
    manager_id INTEGER REFERENCES hr_person (person_id),
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    locked_flag CHAR(1) NOT NULL DEFAULT 'N' CHECK (locked_flag IN ('Y', 'N')),
    deleted_at TIMESTAMP,                       -- set instead of deleting the row
    created_on TIMESTAMP NOT NULL DEFAULT now()
);

-- Account names are unique among the living, whatever their case.
CREATE UNIQUE INDEX hr_person_account_name_uk ON hr_person (lower(account_name)) WHERE deleted_at IS NULL;

CREATE TABLE hr_person_email (
    person_id INTEGER NOT NULL REFERENCES hr_person (person_id),
    email_type VARCHAR(10) NOT NULL CHECK (email_type IN ('WORK', 'HOME')),
    email_address VARCHAR(254) NOT NULL,
    PRIMARY KEY (person_id, email_type)
);

CREATE TABLE hr_org_unit (
    unit_id SERIAL PRIMARY KEY,
    unit_name VARCHAR(120) NOT NULL,
    created_on TIMESTAMP NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX hr_org_unit_name_uk ON hr_org_unit (lower(unit_name));

CREATE TABLE hr_unit_member (
    unit_id INTEGER NOT NULL REFERENCES hr_org_unit (unit_id) ON DELETE CASCADE,
    person_id INTEGER NOT NULL REFERENCES hr_person (person_id),
    PRIMARY KEY (unit_id, person_id)
);
CREATE INDEX hr_unit_member_by_person ON hr_unit_member (person_id);

CREATE TABLE hr_audit (
    audit_id SERIAL PRIMARY KEY,
    person_id INTEGER NOT NULL,
    what VARCHAR(40) NOT NULL,
    at TIMESTAMP NOT NULL DEFAULT now()
);

CREATE PROCEDURE hr_lock_person(p_person_id INTEGER) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE hr_person SET locked_flag = 'Y' WHERE person_id = p_person_id;
    INSERT INTO hr_audit (person_id, what) VALUES (p_person_id, 'locked');
END
$$;

CREATE PROCEDURE hr_unlock_person(p_person_id INTEGER) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE hr_person SET locked_flag = 'N' WHERE person_id = p_person_id;
    INSERT INTO hr_audit (person_id, what) VALUES (p_person_id, 'unlocked');
END
$$;
