"""The intake dialog, the lead qualifier (LLM and rules) and the hand-off to the CRM."""
