-- The service's database roles, created when the postgres volume is first initialised (the image runs
-- /docker-entrypoint-initdb.d/*.sql as POSTGRES_USER, who owns the schema and runs `facemint migrate`):
--   facemint_app      a group role without login; `facemint migrate` grants it what the service needs, and no more
--                     (facemint.migrate.TABLE_PRIVILEGES: no DDL, no TRUNCATE, no UPDATE or DELETE on the journal)
--   facemint_service  the login the api and worker use (FACEMINT_DATABASE_URL in docker-compose.yml)
-- Safe to run again. A volume initialised before this file existed needs it once, by hand:
--   docker compose exec postgres psql -U facemint -d facemint -f /docker-entrypoint-initdb.d/10-facemint-roles.sql
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'facemint_app') THEN
        CREATE ROLE facemint_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'facemint_service') THEN
        CREATE ROLE facemint_service LOGIN PASSWORD 'facemint_service' IN ROLE facemint_app;
    END IF;
END $$;
