"""thinktank: many LLM providers behind one OpenAI-compatible endpoint."""
