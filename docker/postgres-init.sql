-- The compose stack's second database: the Optuna studies live in POSTGRES_DB (optuna), MLflow's
-- runs here. Runs once, when the data volume is created.
CREATE DATABASE mlflow;
