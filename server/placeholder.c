int sbx_server_placeholder(void); int sbx_server_placeholder(void) { return 0; }
