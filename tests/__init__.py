# In-process gRPC servers and channels of the tests use the I/O mode the services use; this
# runs before any test module (or conftest) imports grpc.
from corral.grpc_io import use_polling_io

use_polling_io()
