"""Pure billing domain: timelines, wait attribution, engaged distance, pay policies. No I/O."""
