-- Deterministic sample data for schema.sql: five patients with non-ASCII
-- names, their conditions, encounters (one still open, one without notes,
-- one not billed) and notes.

BEGIN;

INSERT INTO patients (patient_id, given_name, family_name, birth_date, sex, mrn, phones, extra, created_at) VALUES
    ('P001', 'Anna',   'Müller',      '1984-03-12', 'F', 'MRN-10001', '{"+49 30 1234567", "+49 170 5550101"}', '{"language": "de"}', '2019-05-02 08:15:00+00'),
    ('P002', 'Seán',   'O''Brien',    '1971-11-30', 'M', 'MRN-10002', '{"+353 1 555 0199"}',                  '{"language": "en", "preferred_name": "Shane"}', '2019-06-17 13:40:00+00'),
    ('P003', 'Łukasz', 'Wiśniewski',  '1992-07-04', 'M', 'MRN-10003', '{}',                                   NULL, '2020-01-08 10:05:00+00'),
    ('P004', 'Chloé',  'Lefèvre',     '2001-01-21', 'F', 'MRN-10004', '{"+33 6 12 34 56 78"}',                '{"language": "fr"}', '2021-09-30 16:20:00+00'),
    ('P005', 'Ayşe',   'Yılmaz',      NULL,         'U', 'MRN-10005', '{"+90 212 555 0147"}',                 '{}', '2023-02-14 07:55:00+00');

INSERT INTO condition_codes (icd10, display) VALUES
    ('E11.9', 'Type 2 diabetes mellitus without complications'),
    ('I10',   'Essential (primary) hypertension'),
    ('J45.9', 'Asthma, unspecified'),
    ('K21.9', 'Gastro-oesophageal reflux disease without oesophagitis'),
    ('M54.5', 'Low back pain');

-- 1005 has a code the lookup table lacks (F41.1): its description is used.
INSERT INTO conditions (condition_id, patient_id, icd10, description, onset, recorded_at) VALUES
    (1001, 'P001', 'E11.9',   'Diabetes Typ 2',              '2016-04-01', '2019-05-02 08:30:00'),
    (1002, 'P001', 'I10',     'Bluthochdruck',               '2018-10-15', '2019-05-02 08:31:10'),
    (1003, 'P002', 'J45.9',   'Asthma since childhood',      '1979-06-01', '2019-06-17 14:02:00'),
    (1004, 'P003', 'M54.5',   'Low back pain after lifting', '2023-11-20', '2023-11-21 09:12:45'),
    (1005, 'P004', 'F41.1',   'Generalized anxiety disorder', NULL,        '2022-03-03 11:00:00'),
    (1006, 'P005', 'K21.9',   'Reflux',                      '2023-01-10', '2023-02-14 08:10:00');

INSERT INTO encounters (encounter_id, patient_id, kind, started_at, ended_at, charge) VALUES
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a01', 'P001', 'checkup',   '2024-01-15 09:00:00+00', '2024-01-15 09:30:00+00',   85.00),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a02', 'P002', 'emergency', '2024-02-03 22:40:00+00', '2024-02-04 03:10:00+00', 1240.50),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a03', 'P003', 'checkup',   '2024-03-10 14:00:00+00', '2024-03-10 14:20:00+00',   NULL),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a04', 'P004', 'emergency', '2024-04-22 14:05:00+00', NULL,                     310.75),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a05', 'P005', 'checkup',   '2024-05-06 08:45:00+00', '2024-05-06 09:05:00+00',   85.00),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a06', 'P001', 'checkup',   '2024-07-15 09:00:00+00', '2024-07-15 09:25:00+00',   85.00);

-- encounter ...a03 has no notes
INSERT INTO notes (encounter_id, body, author) VALUES
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a01', 'Patientin klagt über Müdigkeit. HbA1c 7,2 %.', 'Dr. Jürgen Groß'),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a01', 'Metformin fortgesetzt; Kontrolle in 6 Monaten.', 'Dr. Jürgen Groß'),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a02', 'Acute asthma attack; "could not finish a sentence". Nebulised salbutamol, discharged.', 'Dr. Niamh Ó Súilleabháin'),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a04', E'Panic attack at work.\nObservation ongoing.', 'Dr. Élodie Mercier'),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a05', 'Routine check-up, no complaints. Reflux better with PPI.', NULL),
    ('0b6f3a52-6d0e-4c1b-9a57-2f0c1d3e4a06', 'HbA1c 6,8 %: better. Blutdruck 128/82.', 'Dr. Jürgen Groß');

COMMIT;
