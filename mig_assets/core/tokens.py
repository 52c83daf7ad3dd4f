"""Token estimates without a tokenizer, shared by ingestion (token budgets) and the LLM backends
(truncation for servers whose tokenizer is not at hand): a leaf module that imports nothing."""

CHARS_PER_TOKEN = 4  # rough English average; only used where no tokenizer runs
