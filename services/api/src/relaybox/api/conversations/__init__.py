"""The Meta-like customer inbox: conversations, their messages, unread counts and states."""
