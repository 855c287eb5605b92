DROP TABLE work;
DROP TYPE process;
DROP TABLE sessions;
DROP TABLE machines;
