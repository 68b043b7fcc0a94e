"""LLM-RetLink (seed paper 000) as a LangGraph state machine: describe → retrieve → store →
enrich → prerank → judge → answer, every decision checkpointed in SQLite."""
