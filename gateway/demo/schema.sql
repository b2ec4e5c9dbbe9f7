-- The demo legacy HR app's SQLite database: employees, teams, team membership.
-- It knows nothing of SCIM; the demo mapping translates. Demo migration 1 (gateway/demo/__init__.py, DEMO_MIGRATIONS):
-- IF NOT EXISTS, so that a database of a release before migrations, which has these tables, takes it as a no-op.

CREATE TABLE IF NOT EXISTS employees (
    emp_no INTEGER PRIMARY KEY AUTOINCREMENT,
    login TEXT NOT NULL UNIQUE COLLATE NOCASE,
    first_nm TEXT,
    last_nm TEXT,
    display_nm TEXT,
    mail TEXT,
    phone TEXT,
    job_title TEXT,
    dept TEXT,
    emp_code TEXT,
    mgr_emp_no INTEGER REFERENCES employees (emp_no) ON DELETE SET NULL,
    -- 'A' active, 'I' inactive, NULL never set (an account the IdP created without `active`).
    status CHAR(1) CHECK (status IN ('A', 'I')),
    created_ts TEXT DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS teams (
    team_id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created_ts TEXT DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS team_members (
    team_id INTEGER NOT NULL REFERENCES teams (team_id) ON DELETE CASCADE,
    emp_no INTEGER NOT NULL REFERENCES employees (emp_no) ON DELETE CASCADE,
    PRIMARY KEY (team_id, emp_no)
);

-- "Who is in which team" from the member's side (removing an employee from every team on delete).
CREATE INDEX IF NOT EXISTS team_members_by_emp ON team_members (emp_no);
