"""The Postman collection of the API (docs/postman/): its generator, `python -m tests.postman`
(`make postman`), and the tests that keep it current and run it with newman."""
