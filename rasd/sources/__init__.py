"""Sources: where events come from (bcc ring buffer, tracefs instance, BERT, /dev/kmsg, replay)."""
