-- Two databases on one PostgreSQL: Optuna and MLflow each keep an Alembic version table
-- (alembic_version), so sharing one database makes the second fail with "Can't locate revision".
-- The postgres image runs this once, when its data volume is first initialised; on a server you
-- run yourself: psql -U <admin> -f deploy/initdb/01-databases.sql
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
