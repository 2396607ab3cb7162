"""A local stand-in for Bitrix24 REST and the messenger APIs, at their real paths."""
