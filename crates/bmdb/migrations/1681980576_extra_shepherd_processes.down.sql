-- PostgreSQL cannot drop enum values; the up migration is idempotent (IF NOT EXISTS).
SELECT 1;
