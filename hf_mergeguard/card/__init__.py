"""Card: the model card of a release (``model_card``: README.md with the Hub's YAML header, rendered from
``model_card_templates/``), its bar chart (``plot``), and where the templates live (``templates``)."""

from .model_card import CARD_FILE, card_data, card_variables, render_card, source_license, write_card
from .plot import PLOT_FILE, plot_scores

__all__ = ["CARD_FILE", "PLOT_FILE", "card_data", "card_variables", "plot_scores", "render_card", "source_license", "write_card"]
