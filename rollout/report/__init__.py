"""Events -> words and pictures: timeline lines, the incident report, status payloads."""
