"""Pulling CRM history, KPI and bonus maths, reports and exports."""
