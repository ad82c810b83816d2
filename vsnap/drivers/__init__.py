"""Drivers: one small class per job, talking to the system through argument-list commands.

A driver never touches the database or Flask.
"""
