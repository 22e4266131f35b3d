-- A small OMOP CDM 5.4 database of our own: four people (one deceased, one
-- with almost everything NULL), their visits, conditions, measurements,
-- observations, drugs, procedures and devices, with concepts of several
-- vocabularies (SNOMED, ICD10CM, LOINC, RxNorm, CPT4, UCUM, and OMOP's own
-- Gender, Race, Visit, Medicare Specialty, CMS Place of Service).
SET search_path TO cdm;

INSERT INTO concept VALUES
  (8507, 'MALE', 'Gender', 'Gender', 'Gender', 'S', 'M', '1970-01-01', '2099-12-31', NULL),
  (8532, 'FEMALE', 'Gender', 'Gender', 'Gender', 'S', 'F', '1970-01-01', '2099-12-31', NULL),
  (8527, 'White', 'Race', 'Race', 'Race', 'S', '5', '1970-01-01', '2099-12-31', NULL),
  (8516, 'Black or African American', 'Race', 'Race', 'Race', 'S', '3', '1970-01-01', '2099-12-31', NULL),
  (8515, 'Asian', 'Race', 'Race', 'Race', 'S', '2', '1970-01-01', '2099-12-31', NULL),
  (38003563, 'Hispanic or Latino', 'Ethnicity', 'Ethnicity', 'Ethnicity', 'S', 'Hispanic', '1970-01-01', '2099-12-31', NULL),
  (38003564, 'Not Hispanic or Latino', 'Ethnicity', 'Ethnicity', 'Ethnicity', 'S', 'Not Hispanic', '1970-01-01', '2099-12-31', NULL),
  (9201, 'Inpatient Visit', 'Visit', 'Visit', 'Visit', 'S', 'IP', '1970-01-01', '2099-12-31', NULL),
  (9202, 'Outpatient Visit', 'Visit', 'Visit', 'Visit', 'S', 'OP', '1970-01-01', '2099-12-31', NULL),
  (9203, 'Emergency Room Visit', 'Visit', 'Visit', 'Visit', 'S', 'ER', '1970-01-01', '2099-12-31', NULL),
  (38004446, 'General Practice', 'Provider', 'Medicare Specialty', 'Medicare Specialty', 'S', '01', '1970-01-01', '2099-12-31', NULL),
  (8940, 'Office', 'Visit', 'CMS Place of Service', 'Place of Service', 'S', '11', '1970-01-01', '2099-12-31', NULL),
  (320128, 'Essential hypertension', 'Condition', 'SNOMED', 'Clinical Finding', 'S', '59621000', '1970-01-01', '2099-12-31', NULL),
  (35207668, 'Essential (primary) hypertension', 'Condition', 'ICD10CM', '3-char billing code', NULL, 'I10', '1970-01-01', '2099-12-31', NULL),
  (3004249, 'Systolic blood pressure', 'Measurement', 'LOINC', 'Clinical Observation', 'S', '8480-6', '1970-01-01', '2099-12-31', NULL),
  (3004410, 'Hemoglobin A1c/Hemoglobin.total in Blood', 'Measurement', 'LOINC', 'Lab Test', 'S', '4548-4', '1970-01-01', '2099-12-31', NULL),
  (706163, 'SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory specimen by NAA with probe detection', 'Measurement', 'LOINC', 'Lab Test', 'S', '94500-6', '1970-01-01', '2099-12-31', NULL),
  (8876, 'millimeter mercury column', 'Unit', 'UCUM', 'Unit', 'S', 'mm[Hg]', '1970-01-01', '2099-12-31', NULL),
  (8554, 'percent', 'Unit', 'UCUM', 'Unit', 'S', '%', '1970-01-01', '2099-12-31', NULL),
  (9529, 'kilogram', 'Unit', 'UCUM', 'Unit', 'S', 'kg', '1970-01-01', '2099-12-31', NULL),
  (9191, 'Positive', 'Meas Value', 'SNOMED', 'Qualifier Value', 'S', '10828004', '1970-01-01', '2099-12-31', NULL),
  (4275495, 'Tobacco smoking behavior', 'Observation', 'SNOMED', 'Observable Entity', 'S', '365981007', '1970-01-01', '2099-12-31', NULL),
  (4144272, 'Never smoked tobacco', 'Observation', 'SNOMED', 'Clinical Finding', 'S', '266919005', '1970-01-01', '2099-12-31', NULL),
  (3025315, 'Body weight', 'Measurement', 'LOINC', 'Clinical Observation', 'S', '29463-7', '1970-01-01', '2099-12-31', NULL),
  (1503297, 'metformin', 'Drug', 'RxNorm', 'Ingredient', 'S', '6809', '1970-01-01', '2099-12-31', NULL),
  (1308216, 'lisinopril 10 MG Oral Tablet', 'Drug', 'RxNorm', 'Clinical Drug', 'S', '314076', '1970-01-01', '2099-12-31', NULL),
  (4132161, 'Oral', 'Route', 'SNOMED', 'Qualifier Value', 'S', '26643006', '1970-01-01', '2099-12-31', NULL),
  (2414398, 'Office or other outpatient visit, established patient, 15 minutes', 'Procedure', 'CPT4', 'CPT4', 'S', '99213', '1970-01-01', '2099-12-31', NULL),
  (4163872, 'Plain chest X-ray', 'Procedure', 'SNOMED', 'Procedure', 'S', '399208008', '1970-01-01', '2099-12-31', NULL),
  (4044008, 'Insulin pump', 'Device', 'SNOMED', 'Physical Object', 'S', '69805005', '1970-01-01', '2099-12-31', NULL);

INSERT INTO location VALUES
  (1, '12 Elm Street', 'Apt 4', 'Boston', 'MA', '02118', 'Suffolk', 'L1', NULL, 'US', 42.336029, -71.071972),
  (2, '9 Harbor Road', NULL, 'Salem', 'MA', '01970', NULL, 'L2', NULL, NULL, NULL, NULL);

INSERT INTO care_site VALUES
  (1, 'Elm Street Clinic', 8940, 1, 'CS-ELM', 'Office'),
  (2, 'Harbor Urgent Care', NULL, NULL, 'CS-HARBOR', NULL);

INSERT INTO provider VALUES
  (1, 'Dr. Ada Brook', '1234567893', NULL, 38004446, 1, 1970, 8532, 'PR-1', 'General Practice', NULL, 'F', NULL),
  (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'PR-2', NULL, NULL, NULL, NULL);

INSERT INTO person VALUES
  (1, 8532, 1980, 2, 29, '1980-02-29 08:15:00', 8527, 38003564, 1, 1, 1, 'MRN-1', 'F', NULL, 'White', NULL, 'Not Hispanic', NULL),
  (2, 8507, 1975, 6, NULL, NULL, 8516, 38003563, NULL, NULL, NULL, 'MRN-2', 'M', NULL, NULL, NULL, NULL, NULL),
  (3, 0, 1950, NULL, NULL, NULL, 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, 8507, 1944, 11, 3, NULL, 8515, 38003564, 2, 2, 2, 'MRN-4', 'M', NULL, 'Asian', NULL, NULL, NULL);

INSERT INTO death VALUES
  (3, '2021-03-04', NULL, NULL, NULL, NULL, NULL),
  (4, '2022-07-19', '2022-07-19 23:40:00', NULL, NULL, NULL, NULL);

INSERT INTO visit_occurrence VALUES
  (1, 1, 9201, '2023-01-10', '2023-01-10 09:00:00', '2023-01-14', '2023-01-14 16:30:00', 32817, 1, 1, 'IP-1', NULL, NULL, NULL, NULL, NULL, NULL),
  (2, 2, 9202, '2023-02-01', NULL, '2023-02-01', NULL, 32817, NULL, 1, 'OP-2', NULL, NULL, NULL, NULL, NULL, NULL),
  (3, 3, 9203, '2021-03-01', '2021-03-01 22:05:00', '2021-03-02', NULL, 32817, 2, 2, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, 1, 0, '2023-05-05', NULL, '2023-05-05', NULL, 32817, NULL, NULL, 'PHONE', NULL, NULL, NULL, NULL, NULL, NULL);

INSERT INTO condition_occurrence VALUES
  (1, 1, 320128, '2023-01-10', '2023-01-10 10:00:00', NULL, NULL, 32817, NULL, NULL, 1, 1, NULL, 'I10', NULL, NULL),
  (2, 2, 35207668, '2019-04-02', NULL, '2022-01-01', NULL, 32817, NULL, NULL, NULL, 2, NULL, 'I10', NULL, NULL),
  (3, 3, 0, '2020-08-15', NULL, NULL, NULL, 32817, NULL, NULL, NULL, NULL, NULL, 'chest pain, unspecified', NULL, NULL);

INSERT INTO measurement VALUES
  (1, 1, 3004249, '2023-01-10', '2023-01-10 09:30:00', NULL, 32817, NULL, 120, NULL, 8876, 90, 140, 1, 1, NULL, 'SBP', NULL, 'mmHg', NULL, NULL, NULL, NULL),
  (2, 2, 3004410, '2023-02-01', NULL, NULL, 32817, NULL, 6.50, NULL, 8554, NULL, 5.7, NULL, 2, NULL, 'HBA1C', NULL, '%', NULL, NULL, NULL, NULL),
  (3, 3, 706163, '2021-03-01', '2021-03-01 22:30:00', NULL, 32817, NULL, NULL, 9191, NULL, NULL, NULL, 2, 3, NULL, 'COVID PCR', NULL, NULL, NULL, 'POS', NULL, NULL),
  (4, 4, 0, '2022-01-01', NULL, NULL, 32817, NULL, 0.123456789012345678, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'LOCAL-RATIO', NULL, NULL, NULL, NULL, NULL, NULL);

INSERT INTO observation VALUES
  (1, 1, 4275495, '2023-01-10', NULL, 32817, NULL, NULL, 4144272, NULL, NULL, 1, 1, NULL, 'SMOKING', NULL, NULL, NULL, 'never', NULL, NULL),
  (2, 2, 3025315, '2023-02-01', '2023-02-01 11:00:00', 32817, 72.5, NULL, NULL, NULL, 9529, NULL, 2, NULL, 'WEIGHT', NULL, 'kg', NULL, NULL, NULL, NULL),
  (3, 4, 0, '2022-06-01', NULL, 32817, NULL, 'lives alone', NULL, NULL, NULL, NULL, NULL, NULL, 'LIVING SITUATION', NULL, NULL, NULL, NULL, NULL, NULL);

INSERT INTO drug_exposure VALUES
  (1, 1, 1503297, '2023-01-14', NULL, '2023-02-13', NULL, NULL, 38000177, NULL, 2, 60, 30, 'one tablet twice daily', 4132161, NULL, 1, 1, NULL, 'METFORMIN 500', NULL, 'PO', NULL),
  (2, 2, 1308216, '2023-02-01', '2023-02-01 12:00:00', '2023-03-03', NULL, NULL, 32817, NULL, NULL, NULL, NULL, NULL, 4132161, NULL, NULL, 2, NULL, 'LISINOPRIL 10', NULL, 'oral', NULL),
  (3, 4, 0, '2022-05-01', NULL, '2022-05-31', NULL, NULL, 38000177, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 2, NULL, NULL, 'HERBAL TEA', NULL, NULL, NULL);

INSERT INTO procedure_occurrence VALUES
  (1, 1, 2414398, '2023-01-10', NULL, NULL, NULL, 32817, NULL, 1, 1, 1, NULL, '99213', NULL, NULL),
  (2, 3, 4163872, '2021-03-01', '2021-03-01 22:40:00', '2021-03-01', '2021-03-01 22:55:00', 32817, NULL, NULL, NULL, 3, NULL, 'CXR', NULL, NULL);

INSERT INTO device_exposure VALUES
  (1, 1, 4044008, '2023-01-12', NULL, '2023-01-14', NULL, 32817, '(01)00643169007222(17)250101', 'LOT-77', 1, 1, 1, NULL, 'PUMP', NULL, NULL, NULL, NULL),
  (2, 2, 0, '2023-02-01', NULL, NULL, NULL, 32817, NULL, NULL, NULL, NULL, 2, NULL, 'CANE', NULL, NULL, NULL, NULL);
