-- The OMOP CDM 5.4 tables the built-in `omop` map reads, in schema `cdm`,
-- with the column names, types and nullability of the CDM 5.4 PostgreSQL
-- DDL (OHDSI CommonDataModel, inst/ddl/5.4/postgresql); the tables the map
-- does not read are left out. Load with seed.sql after it.
DROP SCHEMA IF EXISTS cdm CASCADE;
CREATE SCHEMA cdm;
SET search_path TO cdm;

CREATE TABLE concept (
  concept_id integer NOT NULL PRIMARY KEY,
  concept_name varchar(255) NOT NULL,
  domain_id varchar(20) NOT NULL,
  vocabulary_id varchar(20) NOT NULL,
  concept_class_id varchar(20) NOT NULL,
  standard_concept varchar(1) NULL,
  concept_code varchar(50) NOT NULL,
  valid_start_date date NOT NULL,
  valid_end_date date NOT NULL,
  invalid_reason varchar(1) NULL
);

CREATE TABLE location (
  location_id integer NOT NULL PRIMARY KEY,
  address_1 varchar(50) NULL, address_2 varchar(50) NULL,
  city varchar(50) NULL, state varchar(2) NULL, zip varchar(9) NULL,
  county varchar(20) NULL, location_source_value varchar(50) NULL,
  country_concept_id integer NULL, country_source_value varchar(80) NULL,
  latitude numeric NULL, longitude numeric NULL
);

CREATE TABLE care_site (
  care_site_id integer NOT NULL PRIMARY KEY,
  care_site_name varchar(255) NULL,
  place_of_service_concept_id integer NULL,
  location_id integer NULL,
  care_site_source_value varchar(50) NULL,
  place_of_service_source_value varchar(50) NULL
);

CREATE TABLE provider (
  provider_id integer NOT NULL PRIMARY KEY,
  provider_name varchar(255) NULL, npi varchar(20) NULL, dea varchar(20) NULL,
  specialty_concept_id integer NULL, care_site_id integer NULL,
  year_of_birth integer NULL, gender_concept_id integer NULL,
  provider_source_value varchar(50) NULL, specialty_source_value varchar(50) NULL,
  specialty_source_concept_id integer NULL, gender_source_value varchar(50) NULL,
  gender_source_concept_id integer NULL
);

CREATE TABLE person (
  person_id integer NOT NULL PRIMARY KEY,
  gender_concept_id integer NOT NULL,
  year_of_birth integer NOT NULL, month_of_birth integer NULL,
  day_of_birth integer NULL, birth_datetime timestamp NULL,
  race_concept_id integer NOT NULL, ethnicity_concept_id integer NOT NULL,
  location_id integer NULL, provider_id integer NULL, care_site_id integer NULL,
  person_source_value varchar(50) NULL, gender_source_value varchar(50) NULL,
  gender_source_concept_id integer NULL, race_source_value varchar(50) NULL,
  race_source_concept_id integer NULL, ethnicity_source_value varchar(50) NULL,
  ethnicity_source_concept_id integer NULL
);

CREATE TABLE death (
  person_id integer NOT NULL, death_date date NOT NULL,
  death_datetime timestamp NULL, death_type_concept_id integer NULL,
  cause_concept_id integer NULL, cause_source_value varchar(50) NULL,
  cause_source_concept_id integer NULL
);

CREATE TABLE visit_occurrence (
  visit_occurrence_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, visit_concept_id integer NOT NULL,
  visit_start_date date NOT NULL, visit_start_datetime timestamp NULL,
  visit_end_date date NOT NULL, visit_end_datetime timestamp NULL,
  visit_type_concept_id integer NOT NULL,
  provider_id integer NULL, care_site_id integer NULL,
  visit_source_value varchar(50) NULL, visit_source_concept_id integer NULL,
  admitted_from_concept_id integer NULL, admitted_from_source_value varchar(50) NULL,
  discharged_to_concept_id integer NULL, discharged_to_source_value varchar(50) NULL,
  preceding_visit_occurrence_id integer NULL
);

CREATE TABLE condition_occurrence (
  condition_occurrence_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, condition_concept_id integer NOT NULL,
  condition_start_date date NOT NULL, condition_start_datetime timestamp NULL,
  condition_end_date date NULL, condition_end_datetime timestamp NULL,
  condition_type_concept_id integer NOT NULL,
  condition_status_concept_id integer NULL, stop_reason varchar(20) NULL,
  provider_id integer NULL, visit_occurrence_id integer NULL,
  visit_detail_id integer NULL, condition_source_value varchar(50) NULL,
  condition_source_concept_id integer NULL,
  condition_status_source_value varchar(50) NULL
);

CREATE TABLE drug_exposure (
  drug_exposure_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, drug_concept_id integer NOT NULL,
  drug_exposure_start_date date NOT NULL, drug_exposure_start_datetime timestamp NULL,
  drug_exposure_end_date date NOT NULL, drug_exposure_end_datetime timestamp NULL,
  verbatim_end_date date NULL, drug_type_concept_id integer NOT NULL,
  stop_reason varchar(20) NULL, refills integer NULL, quantity numeric NULL,
  days_supply integer NULL, sig text NULL, route_concept_id integer NULL,
  lot_number varchar(50) NULL, provider_id integer NULL,
  visit_occurrence_id integer NULL, visit_detail_id integer NULL,
  drug_source_value varchar(50) NULL, drug_source_concept_id integer NULL,
  route_source_value varchar(50) NULL, dose_unit_source_value varchar(50) NULL
);

CREATE TABLE procedure_occurrence (
  procedure_occurrence_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, procedure_concept_id integer NOT NULL,
  procedure_date date NOT NULL, procedure_datetime timestamp NULL,
  procedure_end_date date NULL, procedure_end_datetime timestamp NULL,
  procedure_type_concept_id integer NOT NULL, modifier_concept_id integer NULL,
  quantity integer NULL, provider_id integer NULL,
  visit_occurrence_id integer NULL, visit_detail_id integer NULL,
  procedure_source_value varchar(50) NULL, procedure_source_concept_id integer NULL,
  modifier_source_value varchar(50) NULL
);

CREATE TABLE device_exposure (
  device_exposure_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, device_concept_id integer NOT NULL,
  device_exposure_start_date date NOT NULL, device_exposure_start_datetime timestamp NULL,
  device_exposure_end_date date NULL, device_exposure_end_datetime timestamp NULL,
  device_type_concept_id integer NOT NULL, unique_device_id varchar(255) NULL,
  production_id varchar(255) NULL, quantity integer NULL, provider_id integer NULL,
  visit_occurrence_id integer NULL, visit_detail_id integer NULL,
  device_source_value varchar(50) NULL, device_source_concept_id integer NULL,
  unit_concept_id integer NULL, unit_source_value varchar(50) NULL,
  unit_source_concept_id integer NULL
);

CREATE TABLE measurement (
  measurement_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, measurement_concept_id integer NOT NULL,
  measurement_date date NOT NULL, measurement_datetime timestamp NULL,
  measurement_time varchar(10) NULL, measurement_type_concept_id integer NOT NULL,
  operator_concept_id integer NULL, value_as_number numeric NULL,
  value_as_concept_id integer NULL, unit_concept_id integer NULL,
  range_low numeric NULL, range_high numeric NULL, provider_id integer NULL,
  visit_occurrence_id integer NULL, visit_detail_id integer NULL,
  measurement_source_value varchar(50) NULL, measurement_source_concept_id integer NULL,
  unit_source_value varchar(50) NULL, unit_source_concept_id integer NULL,
  value_source_value varchar(50) NULL, measurement_event_id integer NULL,
  meas_event_field_concept_id integer NULL
);

CREATE TABLE observation (
  observation_id integer NOT NULL PRIMARY KEY,
  person_id integer NOT NULL, observation_concept_id integer NOT NULL,
  observation_date date NOT NULL, observation_datetime timestamp NULL,
  observation_type_concept_id integer NOT NULL, value_as_number numeric NULL,
  value_as_string varchar(60) NULL, value_as_concept_id integer NULL,
  qualifier_concept_id integer NULL, unit_concept_id integer NULL,
  provider_id integer NULL, visit_occurrence_id integer NULL,
  visit_detail_id integer NULL, observation_source_value varchar(50) NULL,
  observation_source_concept_id integer NULL, unit_source_value varchar(50) NULL,
  qualifier_source_value varchar(50) NULL, value_source_value varchar(50) NULL,
  observation_event_id integer NULL, obs_event_field_concept_id integer NULL
);
