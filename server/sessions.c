/* placeholder */ typedef int sbxd_placeholder_sessions;
