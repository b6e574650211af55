"""Quality: asset checks over the landed events and the topics, their alerts and schedule."""
