"""The ground floor: what every part of a run shares and no environment shapes.

The run's state, the doors through which it prints, runs commands and speaks
HTTP, its report, secret masking, failures and their diagnoses. Nothing here
imports from the floors above.
"""
