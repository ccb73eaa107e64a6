"""The model core: checkpoint loading (`loader`, `weights*`), `config`, `tokenizer`, and the
decoder itself (`transformer`). Pure functions and data; the engine places and jits them."""
