-- A small clinic database: the source of examples/postgres/migration.yaml.
-- Re-runnable: it drops its own tables first.
--   psql "$FHIRLIFT_PG_URL" -f schema.sql -f seed.sql

SET client_min_messages = warning;
DROP TABLE IF EXISTS notes, encounters, conditions, condition_codes, patients;

CREATE TABLE patients (
    patient_id  text PRIMARY KEY,                 -- the clinic's id: 'P001'
    given_name  text NOT NULL,
    family_name text NOT NULL,
    birth_date  date,
    sex         char(1) CHECK (sex IN ('M', 'F', 'O', 'U')),
    mrn         text NOT NULL UNIQUE,             -- medical record number
    phones      text[] NOT NULL DEFAULT '{}',     -- first one preferred
    extra       jsonb,                            -- free-form: {"language": "de"}
    created_at  timestamptz NOT NULL
);

-- ICD-10 (WHO) codes and their display text; conditions.icd10 is free text from
-- the old system, so a code may be missing here (the query LEFT JOINs).
CREATE TABLE condition_codes (
    icd10   text PRIMARY KEY,
    display text NOT NULL
);

CREATE TABLE conditions (
    condition_id bigint PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients,
    icd10        text NOT NULL,
    description  text,
    onset        date,
    recorded_at  timestamp without time zone NOT NULL   -- clinic local time
);

CREATE TABLE encounters (
    encounter_id uuid PRIMARY KEY,
    patient_id   text NOT NULL REFERENCES patients,
    kind         text NOT NULL CHECK (kind IN ('checkup', 'emergency')),
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz,                      -- NULL: still going on
    charge       numeric(12, 2)                    -- EUR; NULL: not billed
);

CREATE TABLE notes (
    note_id      serial PRIMARY KEY,
    encounter_id uuid NOT NULL REFERENCES encounters,
    body         text NOT NULL,
    author       text
);

CREATE INDEX conditions_patient ON conditions (patient_id);
CREATE INDEX encounters_patient ON encounters (patient_id);
CREATE INDEX notes_encounter ON notes (encounter_id);
