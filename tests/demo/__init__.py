"""`make demo` (`python -m tests.demo`): the stack on a database and topology of its own, four
scenes through the real services (a mailing, a Meta conversation, a retried send, a messenger
exchange), and a report of what the providers and the API saw (`demo-report.md`)."""
