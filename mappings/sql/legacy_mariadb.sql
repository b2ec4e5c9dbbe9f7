-- A legacy MariaDB schema (mappings/legacy_mariadb.yaml maps it): a PHP intranet's user and group
-- tables with prefixed column names, AUTO_INCREMENT keys, an active flag kept as 'Y' / 'N',
-- and a plain membership join table. It knows nothing of SCIM.
--
--   mariadb intranet < mappings/sql/legacy_mariadb.sql

CREATE TABLE usr (
    usr_id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    usr_login VARCHAR(80) NOT NULL,
    usr_fname VARCHAR(60),
    usr_lname VARCHAR(60),
    usr_display VARCHAR(120),
    usr_email VARCHAR(190),
    usr_phone VARCHAR(40),
    usr_title VARCHAR(100),
    usr_active CHAR(1) NOT NULL DEFAULT 'Y',
    usr_created DATETIME DEFAULT CURRENT_TIMESTAMP,
    UNIQUE KEY usr_login_uk (usr_login),
    CONSTRAINT usr_active_chk CHECK (usr_active IN ('Y', 'N'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE grp (
    grp_id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    grp_name VARCHAR(100) NOT NULL,
    grp_created DATETIME DEFAULT CURRENT_TIMESTAMP,
    UNIQUE KEY grp_name_uk (grp_name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE usr_grp (
    grp_id INT UNSIGNED NOT NULL,
    usr_id INT UNSIGNED NOT NULL,
    PRIMARY KEY (grp_id, usr_id),
    KEY usr_grp_by_usr (usr_id),
    CONSTRAINT usr_grp_grp_fk FOREIGN KEY (grp_id) REFERENCES grp (grp_id) ON DELETE CASCADE,
    CONSTRAINT usr_grp_usr_fk FOREIGN KEY (usr_id) REFERENCES usr (usr_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
