"""Closed-loop simulation (`coea simulate`): oracle users, systems that update, measures."""
