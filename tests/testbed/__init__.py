"""Live services the project's tests run the smoke suite against."""
