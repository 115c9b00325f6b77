"""Classification: severity, containment and blast radius of each decoded event."""
