"""ClickHouse: the schema (DDL beside the rows) and its writer."""
