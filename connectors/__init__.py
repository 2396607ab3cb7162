"""Talking to the outside: Bitrix24, messenger senders, the LLM client."""
