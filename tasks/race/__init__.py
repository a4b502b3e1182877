"""RACE: multiple-choice reading comprehension with BERT."""
