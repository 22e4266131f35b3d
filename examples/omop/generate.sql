-- A CDM database of any size for `cargo xtask bench omop`: the function
-- cdm_generate(persons) adds `persons` people to the tables of schema.sql,
-- with the shape of a clinical CDM per person:
--
--   visit_occurrence 3, condition_occurrence 3, measurement 10 (half a
--   number with a UCUM unit, three a coded value, two no value),
--   observation 3 (coded, number, text), drug_exposure 2 (a prescription,
--   38000177, and an EHR record of use, 32817), procedure_occurrence 1,
--   device_exposure 1 in 5 people, death 1 in 10; and, whatever `persons`,
--   300 locations, 100 care sites and 400 providers.
--
-- About 23 rows a person. Every concept id used is one of seed.sql's, so
-- codes resolve through the map's joins; load seed.sql first. New rows take
-- ids after those already in each table, so seed.sql's four people stay.
--
--   psql "$FHIRLIFT_PG_URL" -f examples/omop/schema.sql -f examples/omop/seed.sql \
--        -f examples/omop/generate.sql -c 'SELECT cdm_generate(100000)'
--
-- Values are derived from the row numbers (no random()): the same
-- `persons` gives the same rows on every run.
CREATE OR REPLACE FUNCTION cdm_generate(persons integer) RETURNS void
LANGUAGE plpgsql
SET search_path = cdm
AS $$
DECLARE
  n_locations  constant integer := 300;
  n_care_sites constant integer := 100;
  n_providers  constant integer := 400;
  -- the largest id each table holds before this run
  loc  integer := (SELECT coalesce(max(location_id), 0) FROM location);
  cs   integer := (SELECT coalesce(max(care_site_id), 0) FROM care_site);
  pr   integer := (SELECT coalesce(max(provider_id), 0) FROM provider);
  pe   integer := (SELECT coalesce(max(person_id), 0) FROM person);
  vo   integer := (SELECT coalesce(max(visit_occurrence_id), 0) FROM visit_occurrence);
  co   integer := (SELECT coalesce(max(condition_occurrence_id), 0) FROM condition_occurrence);
  me   integer := (SELECT coalesce(max(measurement_id), 0) FROM measurement);
  ob   integer := (SELECT coalesce(max(observation_id), 0) FROM observation);
  de   integer := (SELECT coalesce(max(drug_exposure_id), 0) FROM drug_exposure);
  po   integer := (SELECT coalesce(max(procedure_occurrence_id), 0) FROM procedure_occurrence);
  dx   integer := (SELECT coalesce(max(device_exposure_id), 0) FROM device_exposure);
BEGIN
  IF (SELECT count(*) FROM concept WHERE concept_id IN (3004249, 1503297, 4044008)) < 3 THEN
    RAISE EXCEPTION 'cdm_generate: load seed.sql first (the generated rows use its concepts)';
  END IF;

  -- locations, care sites and providers: a few hundred, shared by everyone
  INSERT INTO location
  SELECT loc + l, l || ' Main Street', CASE WHEN l % 4 = 0 THEN 'Suite ' || l % 90 END,
         (ARRAY['Boston', 'Salem', 'Worcester', 'Springfield', 'Lowell'])[1 + l % 5], 'MA',
         lpad((1000 + l % 1500)::text, 5, '0'), 'County ' || l % 14, 'LOC-' || l,
         NULL, 'US', 42 + (l % 100) / 100.0, -71 - (l % 100) / 100.0
    FROM generate_series(1, n_locations) AS l;

  INSERT INTO care_site
  SELECT cs + c, 'Clinic ' || c, CASE WHEN c % 3 = 0 THEN 0 ELSE 8940 END,
         loc + 1 + c % n_locations, 'CS-' || c, 'Office'
    FROM generate_series(1, n_care_sites) AS c;

  INSERT INTO provider
  SELECT pr + p, 'Dr. Provider ' || p,
         CASE WHEN p % 5 <> 0 THEN (1000000000 + p)::text END,   -- NPI for most
         NULL, CASE WHEN p % 2 = 0 THEN 38004446 ELSE 0 END, cs + 1 + p % n_care_sites,
         1950 + p % 40, (ARRAY[8507, 8532, 0])[1 + p % 3], 'PR-' || p,
         CASE WHEN p % 2 = 0 THEN 'General Practice' END, NULL, NULL, NULL
    FROM generate_series(1, n_providers) AS p;

  -- people: birth dates at every precision the CDM allows, most with an
  -- address, a general practitioner and a care site
  INSERT INTO person
  SELECT pe + i, (ARRAY[8507, 8532, 8532, 8507, 0])[1 + i % 5], 1930 + i % 80,
         CASE WHEN i % 20 <> 0 THEN 1 + i % 12 END,
         CASE WHEN i % 10 > 1 THEN 1 + i % 28 END,
         CASE WHEN i % 10 = 9 THEN make_timestamp(1930 + i % 80, 1 + i % 12, 1 + i % 28, i % 24, i % 60, 0) END,
         (ARRAY[8527, 8527, 8516, 8515, 0])[1 + i % 5], (ARRAY[38003564, 38003564, 38003563, 0])[1 + i % 4],
         CASE WHEN i % 7 <> 0 THEN loc + 1 + i % n_locations END,
         pr + 1 + i % n_providers, cs + 1 + i % n_care_sites,
         'MRN-G' || i, (ARRAY['M', 'F', 'F', 'M', NULL])[1 + i % 5], NULL,
         (ARRAY['White', 'White', 'Black', 'Asian', NULL])[1 + i % 5], NULL, NULL, NULL
    FROM generate_series(1, persons) AS i;

  -- one person in ten has died (half with a time of death)
  INSERT INTO death
  SELECT pe + i, date '2024-01-01' - i % 1500,
         CASE WHEN i % 20 = 0 THEN (date '2024-01-01' - i % 1500) + time '13:45' END,
         32817, NULL, NULL, NULL
    FROM generate_series(10, persons, 10) AS i;

  -- 3 visits a person: mostly outpatient, some inpatient and emergency,
  -- a few with concept 0; visit k of person i has id vo + 3 (i - 1) + k + 1
  INSERT INTO visit_occurrence
  SELECT vo + 3 * (i - 1) + k + 1, pe + i,
         (ARRAY[9202, 9202, 9201, 9203, 9202, 0])[1 + (i + k) % 6],
         date '2018-01-01' + (i * 7 + k * 211) % 2000,
         CASE WHEN (i + k) % 2 = 0 THEN (date '2018-01-01' + (i * 7 + k * 211) % 2000) + time '09:30' END,
         date '2018-01-01' + (i * 7 + k * 211) % 2000 + CASE WHEN (i + k) % 6 = 2 THEN 4 ELSE 0 END,
         NULL, 32817, pr + 1 + (i + k) % n_providers, cs + 1 + (i + k) % n_care_sites,
         'V-' || i || '-' || k, NULL, NULL, NULL, NULL, NULL, NULL
    FROM generate_series(1, persons) AS i, generate_series(0, 2) AS k;

  -- 3 conditions a person, each in one of their visits; a third resolved
  INSERT INTO condition_occurrence
  SELECT co + 3 * (i - 1) + k + 1, pe + i, (ARRAY[320128, 35207668, 320128, 0])[1 + (i + k) % 4],
         date '2018-01-01' + (i * 7 + k * 211) % 2000, NULL,
         CASE WHEN k = 2 THEN date '2018-01-01' + (i * 7 + k * 211) % 2000 + 90 END, NULL,
         32817, NULL, NULL, pr + 1 + (i + k) % n_providers,
         CASE WHEN k < 2 THEN vo + 3 * (i - 1) + k + 1 END, NULL,
         (ARRAY['I10', 'I10', 'I10', 'R07.9'])[1 + (i + k) % 4], NULL, NULL
    FROM generate_series(1, persons) AS i, generate_series(0, 2) AS k;

  -- 10 measurements a person: k 0-4 a number with a UCUM unit (blood
  -- pressure with a reference range, HbA1c, weight), k 5-7 a coded value
  -- (a positive PCR), k 8-9 no value at all
  INSERT INTO measurement
  SELECT me + 10 * (i - 1) + k + 1, pe + i,
         CASE WHEN k IN (0, 1) THEN 3004249 WHEN k IN (2, 3) THEN 3004410
              WHEN k = 4 THEN 3025315 WHEN k < 8 THEN 706163 ELSE 0 END,
         date '2018-01-01' + (i * 7 + k * 97) % 2000,
         CASE WHEN k % 2 = 0 THEN (date '2018-01-01' + (i * 7 + k * 97) % 2000) + time '10:15' END,
         NULL, 32817, NULL,
         CASE WHEN k IN (0, 1) THEN 100 + (i * 7 + k) % 60
              WHEN k IN (2, 3) THEN 4.5 + ((i + k) % 40) / 10.0
              WHEN k = 4 THEN 50 + (i % 600) / 10.0 END,
         CASE WHEN k BETWEEN 5 AND 7 THEN 9191 END,
         CASE WHEN k IN (0, 1) THEN 8876 WHEN k IN (2, 3) THEN 8554 WHEN k = 4 THEN 9529 END,
         CASE WHEN k IN (0, 1) THEN 90 END, CASE WHEN k IN (0, 1) THEN 140 WHEN k IN (2, 3) THEN 5.7 END,
         pr + 1 + (i + k) % n_providers, vo + 3 * (i - 1) + k % 3 + 1, NULL,
         (ARRAY['SBP', 'SBP', 'HBA1C', 'HBA1C', 'WEIGHT', 'COVID PCR', 'COVID PCR', 'COVID PCR', 'LOCAL-1', 'LOCAL-2'])[1 + k],
         NULL,
         (ARRAY['mmHg', 'mmHg', '%', '%', 'kg', NULL, NULL, NULL, NULL, NULL])[1 + k], NULL,
         CASE WHEN k BETWEEN 5 AND 7 THEN 'POS' END, NULL, NULL
    FROM generate_series(1, persons) AS i, generate_series(0, 9) AS k;

  -- 3 observations a person: smoking (a coded value), weight (a number in
  -- kg), living situation (text, concept 0)
  INSERT INTO observation
  SELECT ob + 3 * (i - 1) + k + 1, pe + i, (ARRAY[4275495, 3025315, 0])[1 + k],
         date '2018-01-01' + (i * 7 + k * 53) % 2000,
         CASE WHEN k = 1 THEN (date '2018-01-01' + (i * 7 + k * 53) % 2000) + time '11:00' END,
         32817, CASE WHEN k = 1 THEN 50 + (i % 600) / 10.0 END,
         CASE WHEN k = 2 THEN (ARRAY['lives alone', 'lives with family', 'care home'])[1 + i % 3] END,
         CASE WHEN k = 0 THEN 4144272 END, NULL, CASE WHEN k = 1 THEN 9529 END,
         pr + 1 + (i + k) % n_providers, CASE WHEN k < 2 THEN vo + 3 * (i - 1) + k + 1 END, NULL,
         (ARRAY['SMOKING', 'WEIGHT', 'LIVING SITUATION'])[1 + k], NULL,
         CASE WHEN k = 1 THEN 'kg' END, NULL, CASE WHEN k = 0 THEN 'never' END, NULL, NULL
    FROM generate_series(1, persons) AS i, generate_series(0, 2) AS k;

  -- 2 drug exposures a person: a written prescription (38000177, a
  -- MedicationRequest) and an EHR record of use (32817, a
  -- MedicationStatement), the drug alternating between people
  INSERT INTO drug_exposure
  SELECT de + 2 * (i - 1) + k + 1, pe + i, (ARRAY[1503297, 1308216])[1 + (i + k) % 2],
         date '2018-01-01' + (i * 7 + k * 31) % 2000,
         CASE WHEN k = 1 THEN (date '2018-01-01' + (i * 7 + k * 31) % 2000) + time '12:00' END,
         date '2018-01-01' + (i * 7 + k * 31) % 2000 + 30, NULL, NULL,
         (ARRAY[38000177, 32817])[1 + k], NULL,
         CASE WHEN k = 0 THEN i % 4 END, CASE WHEN k = 0 THEN 30 + 30 * (i % 3) END,
         CASE WHEN k = 0 THEN 30 END, CASE WHEN k = 0 THEN 'one tablet twice daily' END,
         4132161, NULL, pr + 1 + (i + k) % n_providers, vo + 3 * (i - 1) + k + 1, NULL,
         (ARRAY['METFORMIN 500', 'LISINOPRIL 10'])[1 + (i + k) % 2], NULL, 'PO', NULL
    FROM generate_series(1, persons) AS i, generate_series(0, 1) AS k;

  -- 1 procedure a person, in their first visit
  INSERT INTO procedure_occurrence
  SELECT po + i, pe + i, (ARRAY[2414398, 4163872])[1 + i % 2],
         date '2018-01-01' + (i * 7) % 2000,
         CASE WHEN i % 2 = 1 THEN (date '2018-01-01' + (i * 7) % 2000) + time '14:20' END,
         NULL, NULL, 32817, NULL, 1, pr + 1 + i % n_providers, vo + 3 * (i - 1) + 1, NULL,
         (ARRAY['99213', 'CXR'])[1 + i % 2], NULL, NULL
    FROM generate_series(1, persons) AS i;

  -- a device (an insulin pump, with UDI and lot) for one person in five
  INSERT INTO device_exposure
  SELECT dx + i / 5, pe + i, 4044008, date '2018-01-01' + (i * 7) % 2000, NULL,
         date '2018-01-01' + (i * 7) % 2000 + 365, NULL, 32817,
         '(01)00643169007222(21)' || i, 'LOT-' || i % 97, 1, pr + 1 + i % n_providers,
         vo + 3 * (i - 1) + 1, NULL, 'PUMP', NULL, NULL, NULL, NULL
    FROM generate_series(5, persons, 5) AS i;

  ANALYZE;
END;
$$;
