"""Running recipes: generation and scoring with resume, environment capture, reports."""
