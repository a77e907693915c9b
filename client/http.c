/* placeholder */ typedef int sbx_placeholder_http;
