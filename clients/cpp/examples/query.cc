// Calls GetRecommendations, GetPersonalizedRanking and QueryForecast and prints one JSON object:
//   {"recommendations": {...}, "ranking": {...}, "forecast": {...}}
// (proto3 JSON of each answer). A failed call prints {"error": {code, message, details}} on stderr, exit 1.
//
//   build/query --target 127.0.0.1:50051 --campaign campaigns/shop --user u42 \
//       [--num-results 10] [--rank i1,i7,i9] --forecast forecasts/next [--item sku42] [--quantile 0.5]...
//
// Every flag also reads an environment variable: FORETELL_TARGET, FORETELL_CAMPAIGN, FORETELL_USER,
// FORETELL_FORECAST, FORETELL_ITEM. Without --rank the recommended items are ranked, in reverse order.
// Without --campaign the recommendation calls are skipped, without --forecast the forecast query.

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "foretell/v1/forecast_query_service.grpc.pb.h"
#include "foretell/v1/recommendation_service.grpc.pb.h"
#include "google/rpc/error_details.pb.h"  // linked so that the details' Any types print as JSON
#include "google/rpc/status.pb.h"

namespace {

namespace v1 = foretell::v1;

const char kUsage[] =
    "usage: query --target HOST:PORT [--campaign NAME --user ID [--num-results N] [--rank A,B,...]]"
    " [--forecast NAME [--item ID] [--quantile Q]...] [--timeout-ms MS]";

struct Args {
  std::string target = "127.0.0.1:50051";
  std::string campaign, user, forecast, item;
  int num_results = 0;
  bool rank_given = false;
  std::vector<std::string> rank;
  std::vector<double> quantiles;
  long timeout_ms = 10000;
};

std::string Env(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

long Integer(const std::string& flag, const std::string& value) {
  size_t used = 0;
  long parsed = -1;
  try {
    parsed = std::stol(value, &used);
  } catch (const std::exception&) {
  }
  if (value.empty() || used != value.size() || parsed < 0)
    throw std::invalid_argument(flag + ": " + value + " is not a whole number");
  return parsed;
}

double Number(const std::string& flag, const std::string& value) {
  size_t used = 0;
  double parsed = 0;
  try {
    parsed = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (value.empty() || used != value.size()) throw std::invalid_argument(flag + ": " + value + " is not a number");
  return parsed;
}

std::vector<std::string> SplitCommas(const std::string& value) {
  std::vector<std::string> out;
  std::stringstream in(value);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty()) out.push_back(part);
  return out;
}

Args Parse(int argc, char** argv) {
  Args args;
  args.target = Env("FORETELL_TARGET", args.target);
  args.campaign = Env("FORETELL_CAMPAIGN", "");
  args.user = Env("FORETELL_USER", "");
  args.forecast = Env("FORETELL_FORECAST", "");
  args.item = Env("FORETELL_ITEM", "");
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage << "\n";
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--target") args.target = value;
    else if (flag == "--campaign") args.campaign = value;
    else if (flag == "--user") args.user = value;
    else if (flag == "--forecast") args.forecast = value;
    else if (flag == "--item") args.item = value;
    else if (flag == "--num-results") args.num_results = static_cast<int>(Integer(flag, value));
    else if (flag == "--rank") args.rank_given = true, args.rank = SplitCommas(value);
    else if (flag == "--quantile") args.quantiles.push_back(Number(flag, value));
    else if (flag == "--timeout-ms") args.timeout_ms = Integer(flag, value);
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (args.campaign.empty() && args.forecast.empty())
    throw std::invalid_argument("give --campaign, --forecast or both");
  if (!args.campaign.empty() && args.user.empty()) throw std::invalid_argument("--campaign needs --user");
  return args;
}

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;  // proto3 JSON: camelCase names, defaults left out
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) throw std::runtime_error("JSON: " + std::string(status.message()));
  return out;
}

std::string Quote(const std::string& text) {
  // A JSON string literal via protobuf's own escaping (a google.protobuf.Value holding the text).
  google::protobuf::Value value;
  value.set_string_value(text);
  return Json(value);
}

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
      "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index <= 16 ? kNames[index] : "UNKNOWN";
}

// A failed call: the code, the message and google.rpc.Status's details (ErrorInfo, BadRequest, ...) as JSON.
struct CallError : std::runtime_error {
  explicit CallError(const grpc::Status& status) : std::runtime_error(status.error_message()), status(status) {}
  grpc::Status status;

  std::string ToJson() const {
    std::string details = "[]";
    google::rpc::Status rich;
    if (!status.error_details().empty() && rich.ParseFromString(status.error_details())) {
      details = "[";
      for (int i = 0; i < rich.details_size(); ++i) details += (i ? "," : "") + Json(rich.details(i));
      details += "]";
    }
    return std::string("{\"code\":\"") + CodeName(status.error_code()) + "\",\"message\":" +
           Quote(status.error_message()) + ",\"details\":" + details + "}";
  }
};

void Check(const grpc::Status& status) {
  if (!status.ok()) throw CallError(status);
}

void SetDeadline(grpc::ClientContext* context, long timeout_ms) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
}

int Run(const Args& args) {
  auto channel = grpc::CreateChannel(args.target, grpc::InsecureChannelCredentials());
  std::vector<std::string> parts;  // "key": value pairs of the printed object

  if (!args.campaign.empty()) {
    auto recommendations = v1::RecommendationService::NewStub(channel);

    v1::GetRecommendationsRequest request;
    request.set_campaign(args.campaign);
    request.set_user_id(args.user);
    request.set_num_results(args.num_results);
    v1::GetRecommendationsResponse recommended;
    grpc::ClientContext context;
    SetDeadline(&context, args.timeout_ms);
    Check(recommendations->GetRecommendations(&context, request, &recommended));
    parts.push_back("\"recommendations\":" + Json(recommended));

    v1::GetPersonalizedRankingRequest rank_request;
    rank_request.set_campaign(args.campaign);
    rank_request.set_user_id(args.user);
    if (args.rank_given) {
      for (const auto& id : args.rank) rank_request.add_input_list(id);
    } else {
      for (int i = recommended.item_list_size() - 1; i >= 0; --i)
        rank_request.add_input_list(recommended.item_list(i).item_id());
    }
    v1::GetPersonalizedRankingResponse ranked;
    grpc::ClientContext rank_context;
    SetDeadline(&rank_context, args.timeout_ms);
    Check(recommendations->GetPersonalizedRanking(&rank_context, rank_request, &ranked));
    parts.push_back("\"ranking\":" + Json(ranked));
  }

  if (!args.forecast.empty()) {
    auto forecasts = v1::ForecastQueryService::NewStub(channel);
    v1::QueryForecastRequest request;
    request.set_forecast(args.forecast);
    request.set_item_id(args.item);
    for (double q : args.quantiles) request.add_quantiles(q);
    v1::QueryForecastResponse answer;
    grpc::ClientContext context;
    SetDeadline(&context, args.timeout_ms);
    Check(forecasts->QueryForecast(&context, request, &answer));
    parts.push_back("\"forecast\":" + Json(answer));
  }

  std::string out = "{";
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "," : "") + parts[i];
  std::cout << out << "}\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = Parse(argc, argv);
  } catch (const std::invalid_argument& error) {
    std::cerr << error.what() << "\n" << kUsage << "\n";
    return 2;
  }
  try {
    return Run(args);
  } catch (const CallError& error) {
    std::cerr << "{\"error\":" << error.ToJson() << "}\n";
    return 1;
  }
}
